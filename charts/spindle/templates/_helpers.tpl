{{/* The chart name, or nameOverride. */}}
{{- define "spindle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, or <release>-<chart> (just <release> when
the release name already contains the chart name). Kept to 48 characters so that
"<prefix>-controller-events" and the like stay within 63.
*/}}
{{- define "spindle.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "spindle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "spindle.labels" -}}
helm.sh/chart: {{ include "spindle.chart" . }}
{{ include "spindle.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spindle
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "spindle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spindle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of one component: (dict "ctx" $ "component" "agent"). */}}
{{- define "spindle.componentLabels" -}}
{{ include "spindle.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "spindle.componentSelectorLabels" -}}
{{ include "spindle.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "spindle.agent.fullname" -}}
{{ include "spindle.fullname" . }}-agent
{{- end }}

{{- define "spindle.controller.fullname" -}}
{{ include "spindle.fullname" . }}-controller
{{- end }}

{{- define "spindle.agent.serviceAccountName" -}}
{{ default (include "spindle.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- end }}

{{- define "spindle.controller.serviceAccountName" -}}
{{ default (include "spindle.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- end }}

{{/* The image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "spindle.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The agent's Secret and ConfigMap references grouped by namespace, as YAML:
  <namespace>: {secrets: [names...], configMaps: [names...]}
Each namespace gets one Role whose rules name exactly these objects.
*/}}
{{- define "spindle.agent.referencesByNamespace" -}}
{{- $byNamespace := dict }}
{{- range $kind, $refs := dict "secrets" .Values.agent.secretRefs "configMaps" .Values.agent.configMapRefs }}
{{- range $refs }}
{{- $entry := get $byNamespace .namespace | default (dict "secrets" (list) "configMaps" (list)) }}
{{- $names := get $entry $kind }}
{{- if not (has .name $names) }}
{{- $_ := set $entry $kind (append $names .name) }}
{{- end }}
{{- $_ := set $byNamespace .namespace $entry }}
{{- end }}
{{- end }}
{{- toYaml $byNamespace }}
{{- end }}

{{/* OTEL_* env of agent and controller: nothing while otel.endpoint is empty. */}}
{{- define "spindle.otelEnv" -}}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
{{- range $name, $value := .Values.otel.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}
