{{/* Labels of every object: the kustomize base's (name, part-of) plus Helm's own. */}}
{{- define "sg.labels" -}}
app.kubernetes.io/name: sidecar-governor
app.kubernetes.io/part-of: sidecar-governor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
