{{- define "flowmason-operator.labels" -}}
app: flowmason-operator
app.kubernetes.io/name: flowmason-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
