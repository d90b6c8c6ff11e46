{{/* Names. */}}
{{- define "modelroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelroute.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "modelroute.operatorName" -}}
{{- printf "%s-operator" (include "modelroute.fullname" .) -}}
{{- end -}}

{{- define "modelroute.webhookServiceName" -}}
{{- printf "%s-webhook" (include "modelroute.fullname" .) -}}
{{- end -}}

{{- define "modelroute.webhookSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "modelroute.fullname" .)) .Values.webhook.certificate.secretName -}}
{{- end -}}

{{- define "modelroute.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelroute.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels. */}}
{{- define "modelroute.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "modelroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelroute
{{- end -}}

{{- define "modelroute.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "modelroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "modelroute.operatorLabels" -}}
{{ include "modelroute.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Images: repository[:tag][@digest]. */}}
{{- define "modelroute.imageRef" -}}
{{- $repo := index . 0 -}}
{{- $tag := index . 1 -}}
{{- $digest := index . 2 -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{- define "modelroute.image" -}}
{{- include "modelroute.imageRef" (list .Values.image.repository (default .Chart.AppVersion .Values.image.tag) .Values.image.digest) -}}
{{- end -}}

{{- define "modelroute.sidecarImage" -}}
{{- $s := .Values.sidecar.image -}}
{{- if or $s.repository $s.tag $s.digest -}}
{{- include "modelroute.imageRef" (list (default .Values.image.repository $s.repository) (default (default .Chart.AppVersion .Values.image.tag) $s.tag) $s.digest) -}}
{{- else -}}
{{- include "modelroute.image" . -}}
{{- end -}}
{{- end -}}

{{/* The webhook certificate's Secret is mounted for sources certManager and secret. */}}
{{- define "modelroute.webhookCertFromSecret" -}}
{{- if and .Values.webhook.enabled (ne .Values.webhook.certificate.source "operator") -}}true{{- end -}}
{{- end -}}

{{/* Checks the schema cannot express. */}}
{{- define "modelroute.validate" -}}
{{- if and .Values.webhook.enabled (eq .Values.webhook.certificate.source "operator") (gt (int .Values.operator.replicas) 1) -}}
{{- fail "operator.replicas > 1 needs a shared webhook certificate: set webhook.certificate.source to certManager or secret (with source operator every replica makes its own CA)" -}}
{{- end -}}
{{- if and .Values.webhook.enabled (eq .Values.webhook.certificate.source "secret") (not .Values.webhook.certificate.secretName) -}}
{{- fail "webhook.certificate.source secret needs webhook.certificate.secretName: a Secret with tls.crt, tls.key and ca.crt" -}}
{{- end -}}
{{- $ports := list (int .Values.operator.healthPort) (int .Values.operator.metricsPort) -}}
{{- if .Values.webhook.enabled -}}{{- $ports = append $ports (int .Values.webhook.port) -}}{{- end -}}
{{- if and .Values.webhook.enabled .Values.budgets.enabled -}}{{- $ports = append $ports (int .Values.budgets.port) -}}{{- end -}}
{{- if ne (len $ports) (len (uniq $ports)) -}}
{{- fail "operator.healthPort, operator.metricsPort, webhook.port and budgets.port must differ" -}}
{{- end -}}
{{- if and .Values.webhook.enabled .Values.budgets.enabled (eq (int .Values.budgets.port) (int .Values.webhook.servicePort)) -}}
{{- fail "budgets.port and webhook.servicePort must differ (both are ports of the webhook's Service)" -}}
{{- end -}}
{{- if eq (int .Values.sidecar.port) (int .Values.sidecar.metricsPort) -}}
{{- fail "sidecar.port and sidecar.metricsPort must differ" -}}
{{- end -}}
{{- end -}}
