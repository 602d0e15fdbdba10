{{/* Names: the chart name, or the release-qualified full name (<= 63 characters). */}}
{{- define "pfo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pfo.fullname" -}}
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

{{- define "pfo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pfo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pfo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pfo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "pfo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pfo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paddle-finetune-operator
{{- end }}

{{/* operator.trainerEnv as the NAME=VALUE,NAME=VALUE list PFO_TRAINER_ENV takes (sorted keys). */}}
{{- define "pfo.trainerEnv" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "pfo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The rules the operator needs on namespaced resources; the same list goes into the ClusterRole
(all namespaces) or into one Role per watched namespace. Keep in step with
operator/finetune_operator/RBAC.md: tests/operator/test_chart.py runs the operator with exactly
these rules and fails if one is missing.
*/}}
{{- define "pfo.namespacedRules" -}}
# FineTuneJobs: watched and read; deleted once spec.runPolicy.ttlSecondsAfterFinished is over.
# No patch/update: the operator writes only the status subresource.
- apiGroups: ["finetune.paddle.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["finetune.paddle.dev"]
  resources: ["finetunejobs/status"]
  verbs: ["patch"]
# Pods carry blockOwnerDeletion in their owner reference to the job, which clusters with the
# OwnerReferencesPermissionEnforcement admission plugin allow only with update on finalizers.
- apiGroups: ["finetune.paddle.dev"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
# One pod per attempt and rank: listed and watched by label, created, deleted on suspend,
# deadline and pending timeout, and when another rank of the attempt failed.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Progress: the tail of the trainer's log.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# One Event per job transition (kubectl describe ftj), and kopf's own warnings.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Kueue (jobs labelled kueue.x-k8s.io/queue-name): a queued attempt's Workload, read by name for
# its ClusterQueue's words (why it waits). Nothing of Kueue's is ever written; harmless where
# Kueue is not installed.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get"]
# Multi-node jobs: a ConfigMap per attempt telling ranks 1.. rank 0's address, created once rank
# 0 has an IP and read back (get) when one of its name exists, to see whether it is this
# attempt's. Never deleted by the operator (the garbage collector removes it with rank 0's pod),
# updated or listed.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create"]
{{- if eq .Values.operator.gangScheduler "coscheduling" }}
# operator.gangScheduler=coscheduling: a PodGroup per attempt (created before its pods).
- apiGroups: ["scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["create"]
{{- else if eq .Values.operator.gangScheduler "volcano" }}
# operator.gangScheduler=volcano: a PodGroup per attempt (created before its pods).
- apiGroups: ["scheduling.volcano.sh"]
  resources: ["podgroups"]
  verbs: ["create"]
{{- end }}
{{- end }}

{{/* The leader-election Lease's name (in the release namespace). */}}
{{- define "pfo.leaseName" -}}
{{- printf "%s-leader" (include "pfo.fullname" .) }}
{{- end }}

{{/*
Checks the values that only make sense together (the schema checks each alone): two replicas
without leader election would both act, and the operator refuses durations that break
client-go's rules, so refuse them here rather than in a crash-looping pod.
*/}}
{{- define "pfo.validate" -}}
{{- $le := .Values.leaderElection }}
{{- if and (gt (int .Values.replicaCount) 1) (not $le.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without it every replica would act on every job" }}
{{- end }}
{{- if .Values.progress.push.enabled }}
{{- $port := int .Values.progress.push.port }}
{{- if or (eq $port (int .Values.metrics.port)) (eq $port (int .Values.healthPort)) }}
{{- fail (printf "progress.push.port (%d) must differ from metrics.port (%v) and healthPort (%v)" $port .Values.metrics.port .Values.healthPort) }}
{{- end }}
{{- end }}
{{- if $le.enabled }}
{{- if ge (float64 $le.renewDeadlineSeconds) (float64 $le.leaseDurationSeconds) }}
{{- fail (printf "leaderElection.renewDeadlineSeconds (%v) must be shorter than leaderElection.leaseDurationSeconds (%v)" $le.renewDeadlineSeconds $le.leaseDurationSeconds) }}
{{- end }}
{{- if ge (mulf 1.2 (float64 $le.retryPeriodSeconds)) (float64 $le.renewDeadlineSeconds) }}
{{- fail (printf "leaderElection.retryPeriodSeconds (%v) x 1.2 must be shorter than leaderElection.renewDeadlineSeconds (%v)" $le.retryPeriodSeconds $le.renewDeadlineSeconds) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The progress endpoint (progress.push): its Service (a DNS label, so at most 63 characters), the
Secret with its certificate, where the pod mounts it, and the URL trainer pods reach it at.
*/}}
{{- define "pfo.progressServiceName" -}}
{{- printf "%s-progress" (include "pfo.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "pfo.progressSecretName" -}}
{{- printf "%s-progress-tls" (include "pfo.fullname" .) }}
{{- end }}

{{- define "pfo.progressTLSDir" -}}
/etc/finetune-operator/progress-tls
{{- end }}

{{- define "pfo.progressURL" -}}
{{- printf "https://%s.%s.svc:%d" (include "pfo.progressServiceName" .) .Release.Namespace (int .Values.progress.push.port) }}
{{- end }}
