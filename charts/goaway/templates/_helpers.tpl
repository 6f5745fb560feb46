{{/* The chart name, or nameOverride. */}}
{{- define "goaway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<name>, or the release name when it already contains the name. */}}
{{- define "goaway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The operator's name: its Deployment, Service, ServiceAccount, RBAC,
MutatingWebhookConfiguration and Lease ("goaway-operator" for a release
named goaway, the operator's own defaults).
*/}}
{{- define "goaway.operator" -}}
{{- printf "%s-operator" (include "goaway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "goaway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "goaway.operator" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* --tls-secret: generate mode's CA and serving certificate. */}}
{{- define "goaway.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "goaway.operator" .) }}
{{- end }}

{{/* cert-manager mode: the Certificate and the Secret it writes. */}}
{{- define "goaway.certificate" -}}
{{- printf "%s-webhook" (include "goaway.operator" .) }}
{{- end }}
{{- define "goaway.certificateSecret" -}}
{{- printf "%s-webhook-cert" (include "goaway.operator" .) }}
{{- end }}

{{/* --tls-dir: where the operator reads tls.crt and tls.key in files mode. */}}
{{- define "goaway.tlsDir" -}}
/var/run/goaway/tls
{{- end }}

{{/* --tls-mode for webhook.tls.mode. */}}
{{- define "goaway.tlsMode" -}}
{{- if eq .Values.webhook.tls.mode "certManager" }}files{{ else }}generate{{ end }}
{{- end }}

{{- define "goaway.certManager" -}}
{{- if eq .Values.webhook.tls.mode "certManager" }}true{{ end }}
{{- end }}

{{/*
An image reference from image values: <repository>:<tag> (the tag
defaults to the chart's appVersion); with a digest, <repository>@<digest>,
or <repository>:<tag>@<digest> when a tag is given too (the runtime pulls
by the digest; the tag is only for people reading it).
*/}}
{{- define "goaway.imageRef" -}}
{{- $image := .image }}
{{- if $image.digest }}
{{- if $image.tag }}
{{- printf "%s:%s@%s" $image.repository $image.tag $image.digest }}
{{- else }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- end }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .appVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "goaway.image" -}}
{{- include "goaway.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "goaway.agentImage" -}}
{{- include "goaway.imageRef" (dict "image" .Values.agent.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "goaway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "goaway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "goaway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "goaway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: goaway
{{- end }}

{{/*
The label every operator pod carries; the webhook's objectSelector skips
pods that have it, so the operator is never sent its own pods (and no
goaway operator injects into another's).
*/}}
{{- define "goaway.operatorPodLabel" -}}
goaway.dev/operator
{{- end }}

{{/* The opt-out label the operator honours (inject::LABEL_INJECT=disabled). */}}
{{- define "goaway.optOutLabel" -}}
goaway.dev/inject
{{- end }}

{{/* The permissions needed wherever the operator works (see rbac.yaml). */}}
{{- define "goaway.workRules" -}}
- apiGroups: ["goaway.dev"]
  resources: ["keepalivepolicies"]
  verbs: ["list", "watch"]
- apiGroups: ["goaway.dev"]
  resources: ["keepalivepolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "list", "patch", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
{{- if include "goaway.redirectProbe" . }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create"]
{{- end }}
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.control.enabled }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get"]
- apiGroups: ["goaway.dev"]
  resources: ["keepalivepolicies/status"]
  verbs: ["get"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{/* The user name the operator's requests carry (its ServiceAccount's). */}}
{{- define "goaway.serviceAccountUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "goaway.serviceAccountName" .) }}
{{- end }}

{{/*
The ConfigMaps the operator writes (controller::apply_config_map): named
goaway-<policy> (crd::config_map_name) and labelled
app.kubernetes.io/managed-by=goaway-operator (controller::LABEL_MANAGED_BY,
MANAGER); a chart test checks these against the operator's code.
*/}}
{{- define "goaway.configMapPrefix" -}}
goaway-
{{- end }}
{{- define "goaway.managedByKey" -}}
app.kubernetes.io/managed-by
{{- end }}
{{- define "goaway.managedByValue" -}}
goaway-operator
{{- end }}

{{/*
Whether the webhook probes namespaces before redirect interception, and so
creates (dry-run) pods: only where the admission policy holds that grant to
dry runs of probe pods (--redirect-probe), and not when redirect is
forbidden anyway (--forbid-redirect). Non-empty for true.
*/}}
{{- define "goaway.redirectProbe" -}}
{{- if and .Values.rbac.admissionPolicy.enabled (not .Values.agent.forbidRedirect) }}true{{- end }}
{{- end }}
{{/*
The only pods the operator creates, as dry runs: the webhook's redirect
probes (inject::redirect_probe_pod), named goaway-redirect-probe-<id>
(inject::PROBE_NAME_PREFIX) and labelled goaway.dev/redirect-probe=true
(inject::LABEL_PROBE); a chart test checks these against the code.
*/}}
{{- define "goaway.probePrefix" -}}
goaway-redirect-probe-
{{- end }}
{{- define "goaway.probeLabelKey" -}}
goaway.dev/redirect-probe
{{- end }}
{{- define "goaway.probeLabelValue" -}}
true
{{- end }}

{{/* The operator's ServiceAccount as an RBAC subject. */}}
{{- define "goaway.subject" -}}
- kind: ServiceAccount
  name: {{ include "goaway.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
