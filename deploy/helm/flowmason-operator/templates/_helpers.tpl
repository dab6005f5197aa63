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


{{/* The StatefulSet's replica count: .Values.replicas when set (0 included), else 1 with sled and 3 with
jetstream. Fails on an event log the chart does not know, and on jetstream without nats.url. */}}
{{- define "flowmason-operator.replicas" -}}
{{- if not (has .Values.eventLog (list "sled" "jetstream")) -}}
{{- fail (printf "eventLog %q: expected sled or jetstream" .Values.eventLog) -}}
{{- end -}}
{{- if and (eq .Values.eventLog "jetstream") (not .Values.nats.url) -}}
{{- fail "eventLog jetstream needs nats.url (the NATS servers of the event log)" -}}
{{- end -}}
{{- if kindIs "invalid" .Values.replicas -}}
{{- ternary 3 1 (eq .Values.eventLog "jetstream") -}}
{{- else -}}
{{- .Values.replicas -}}
{{- end -}}
{{- end -}}
