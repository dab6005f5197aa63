{{- define "flowmason-operator.labels" -}}
app: flowmason-operator
app.kubernetes.io/name: flowmason-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}


{{/* Cluster-scoped names (ClusterRole, ClusterRoleBinding) carry the release's namespace and name, so
that two releases of the chart do not overwrite each other's. */}}
{{- define "flowmason-operator.clusterName" -}}
{{ .Release.Namespace }}-{{ .Release.Name }}-flowmason-operator
{{- end -}}
