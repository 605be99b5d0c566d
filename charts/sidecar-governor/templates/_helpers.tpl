{{/* Labels of every object: the kustomize base's part-of plus Helm's own (the objects that have
app.kubernetes.io/name in the base add it themselves: the generated ConfigMaps do not). */}}
{{- define "sg.labels" -}}
app.kubernetes.io/part-of: sidecar-governor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
