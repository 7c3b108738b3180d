{{/* Names */}}
{{- define "keelson.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The resource prefix, at most 40 characters so that "<fullname>-headless" and the pods'
     "<fullname>-<ordinal>" hostnames stay valid DNS labels. */}}
{{- define "keelson.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "keelson.headless" -}}
{{- printf "%s-headless" (include "keelson.fullname" .) -}}
{{- end -}}

{{- define "keelson.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keelson.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keelson.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keelson.labels" -}}
helm.sh/chart: {{ include "keelson.chart" . }}
{{ include "keelson.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keelson
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "keelson.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "keelson.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "keelson.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Quorum of the configured member count. */}}
{{- define "keelson.quorum" -}}
{{- add (div (int .Values.replicaCount) 2) 1 -}}
{{- end -}}

{{- define "keelson.job" -}}
{{- default (printf "%s-etcd" (include "keelson.fullname" .)) .Values.metrics.job -}}
{{- end -}}

{{/* DNS suffix shared by the members: <headless>.<namespace>.svc.<domain> */}}
{{- define "keelson.memberDomain" -}}
{{- printf "%s.%s.svc.%s" (include "keelson.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "keelson.clientScheme" -}}
{{- if .Values.tls.client.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{- define "keelson.peerScheme" -}}
{{- if .Values.tls.peer.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{/* The peer URL of member <ordinal>, as --initial-cluster and --initial-advertise-peer-urls name it. */}}
{{- define "keelson.peerURL" -}}
{{- printf "%s://%s-%d.%s:%d" (include "keelson.peerScheme" .root) (include "keelson.fullname" .root) (int .ordinal) (include "keelson.memberDomain" .root) (int .root.Values.ports.peer) -}}
{{- end -}}

{{/* --initial-cluster: every ordinal 0..replicaCount-1 by its headless DNS name. */}}
{{- define "keelson.initialCluster" -}}
{{- $root := . -}}
{{- $members := list -}}
{{- range $i := until (int .Values.replicaCount) -}}
{{- $members = append $members (printf "%s-%d=%s" (include "keelson.fullname" $root) $i (include "keelson.peerURL" (dict "root" $root "ordinal" $i))) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{/*
keelson's join step (docs/deploy.md, "Scaling and member replacement"; docs/clustering.md): with
--join-seeds a member whose data dir is empty asks the seeds whether the cluster exists, and then
joins it as a learner (MemberAdd, start with --initial-cluster-state=existing, MemberPromote once
caught up), replacing a member of its name whose disk was lost; `keelson leave` in a preStop
hook removes a member whose ordinal the StatefulSet scaled away. The templates render the flag,
the preStop hook and the RBAC the hook needs when this says "true".
*/}}
{{- define "keelson.joinSupported" -}}true{{- end -}}

{{/* The seeds of the join step: the peer URLs of ordinals 0..replicaCount-1. */}}
{{- define "keelson.seedPeerURLs" -}}
{{- $root := . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.replicaCount) -}}
{{- $urls = append $urls (include "keelson.peerURL" (dict "root" $root "ordinal" $i)) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* The client URL of the client Service, for etcdctl in the test pod and the NOTES. */}}
{{- define "keelson.serviceEndpoint" -}}
{{- printf "%s://%s.%s.svc.%s:%d" (include "keelson.clientScheme" .) (include "keelson.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.ports.client) -}}
{{- end -}}

{{- define "keelson.clientTLSSecret" -}}
{{- if eq .Values.tls.client.source "certManager" -}}
{{- printf "%s-server-tls" (include "keelson.fullname" .) -}}
{{- else -}}
{{- .Values.tls.client.secretName -}}
{{- end -}}
{{- end -}}

{{- define "keelson.peerTLSSecret" -}}
{{- if eq .Values.tls.peer.source "certManager" -}}
{{- printf "%s-peer-tls" (include "keelson.fullname" .) -}}
{{- else -}}
{{- .Values.tls.peer.secretName -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding a client certificate for etcdctl; empty when clients need none. */}}
{{- define "keelson.etcdctlSecret" -}}
{{- if and .Values.tls.client.enabled (ne .Values.tls.client.source "auto") -}}
{{- if .Values.tls.client.clientSecretName -}}
{{- .Values.tls.client.clientSecretName -}}
{{- else if and (eq .Values.tls.client.source "certManager") .Values.tls.client.clientCertAuth -}}
{{- printf "%s-client-tls" (include "keelson.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* etcdctl's TLS flags, for the test pod (certificates mounted at /etc/keelson/etcdctl). */}}
{{- define "keelson.etcdctlTLSArgs" -}}
{{- if .Values.tls.client.enabled -}}
{{- if eq .Values.tls.client.source "auto" -}}
- --insecure-transport=false
- --insecure-skip-tls-verify
{{- else if include "keelson.etcdctlSecret" . -}}
- --cacert=/etc/keelson/etcdctl/ca.crt
- --cert=/etc/keelson/etcdctl/tls.crt
- --key=/etc/keelson/etcdctl/tls.key
{{- else -}}
- --cacert=/etc/keelson/tls/client/ca.crt
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The flags the chart sets on the member's command line. Each is also refused in extraArgs and as
an ETCD_* variable in extraEnv: keelson, as etcd, refuses a variable that repeats a flag.
*/}}
{{- define "keelson.memberArgs" -}}
{{- $fullname := include "keelson.fullname" . -}}
{{- $domain := include "keelson.memberDomain" . -}}
{{- $listen := .Values.listenAddress -}}
{{- $args := list
  "--name=$(POD_NAME)"
  (printf "--data-dir=%s/data" .Values.dataMountPath)
  (printf "--listen-client-urls=%s://%s:%d" (include "keelson.clientScheme" .) $listen (int .Values.ports.client))
  (printf "--advertise-client-urls=%s://$(POD_NAME).%s:%d" (include "keelson.clientScheme" .) $domain (int .Values.ports.client))
  (printf "--listen-peer-urls=%s://%s:%d" (include "keelson.peerScheme" .) $listen (int .Values.ports.peer))
  (printf "--initial-advertise-peer-urls=%s://$(POD_NAME).%s:%d" (include "keelson.peerScheme" .) $domain (int .Values.ports.peer))
  (printf "--listen-metrics-urls=http://%s:%d" $listen (int .Values.ports.metrics))
  (printf "--initial-cluster=%s" (include "keelson.initialCluster" .))
  (printf "--initial-cluster-state=%s" .Values.cluster.initialState)
  (printf "--initial-cluster-token=%s" (default $fullname .Values.cluster.token))
  (printf "--logger=%s" .Values.config.logger)
  (printf "--log-level=%s" .Values.config.logLevel)
  (printf "--metrics=%s" .Values.config.metrics)
  (printf "--snapshot-count=%d" (int64 .Values.config.snapshotCount))
  (printf "--heartbeat-interval=%d" (int64 .Values.config.heartbeatInterval))
  (printf "--election-timeout=%d" (int64 .Values.config.electionTimeout))
  (printf "--quota-backend-bytes=%d" (int64 .Values.config.quotaBackendBytes))
  (printf "--max-request-bytes=%d" (int64 .Values.config.maxRequestBytes))
  (printf "--max-txn-ops=%d" (int64 .Values.config.maxTxnOps))
  (printf "--auto-compaction-mode=%s" .Values.config.autoCompactionMode)
  (printf "--auto-compaction-retention=%s" .Values.config.autoCompactionRetention)
  (printf "--watch-progress-notify-interval=%s" .Values.config.watchProgressNotifyInterval)
-}}
{{- if .Values.tls.client.enabled -}}
{{- if eq .Values.tls.client.source "auto" -}}
{{- $args = append $args "--auto-tls" -}}
{{- else -}}
{{- $args = concat $args (list "--cert-file=/etc/keelson/tls/client/tls.crt" "--key-file=/etc/keelson/tls/client/tls.key") -}}
{{- if .Values.tls.client.clientCertAuth -}}
{{- $args = concat $args (list "--trusted-ca-file=/etc/keelson/tls/client/ca.crt" "--client-cert-auth") -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if .Values.tls.peer.enabled -}}
{{- if eq .Values.tls.peer.source "auto" -}}
{{- $args = append $args "--peer-auto-tls" -}}
{{- else -}}
{{- $args = concat $args (list "--peer-cert-file=/etc/keelson/tls/peer/tls.crt" "--peer-key-file=/etc/keelson/tls/peer/tls.key" "--peer-trusted-ca-file=/etc/keelson/tls/peer/ca.crt") -}}
{{- if .Values.tls.peer.clientCertAuth -}}
{{- $args = append $args "--peer-client-cert-auth" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if include "keelson.joinSupported" . -}}
{{- $args = append $args (printf "--join-seeds=%s" (include "keelson.seedPeerURLs" .)) -}}
{{- end -}}
{{- $args = concat $args (list (printf "--auth-token=%s" (include "keelson.authToken" .)) (printf "--auth-token-ttl=%d" (int64 .Values.auth.token.simpleTtl)) (printf "--bcrypt-cost=%d" (int64 .Values.auth.bcryptCost))) -}}
{{- toJson $args -}}
{{- end -}}

{{/* --auth-token: simple, or jwt with the key files mounted from auth.token.privateKey.existingSecret. */}}
{{- define "keelson.authToken" -}}
{{- $t := .Values.auth.token -}}
{{- if eq $t.type "jwt" -}}
{{- $opts := list "jwt" (printf "priv-key=/etc/keelson/auth/jwt/%s" $t.privateKey.filename) -}}
{{- if $t.privateKey.publicKeyFilename -}}
{{- $opts = append $opts (printf "pub-key=/etc/keelson/auth/jwt/%s" $t.privateKey.publicKeyFilename) -}}
{{- end -}}
{{- $opts = concat $opts (list (printf "sign-method=%s" $t.signMethod) (printf "ttl=%s" $t.ttl)) -}}
{{- join "," $opts -}}
{{- else -}}
simple
{{- end -}}
{{- end -}}

{{/* The Secret and key holding the root password (auth.rbac.create). */}}
{{- define "keelson.authSecret" -}}
{{- default (printf "%s-auth" (include "keelson.fullname" .)) .Values.auth.rbac.existingSecret -}}
{{- end -}}

{{/* etcdctl's credentials from the root password Secret, as environment variables. */}}
{{- define "keelson.etcdctlAuthEnv" -}}
{{- if .Values.auth.rbac.create -}}
- name: ETCDCTL_USER
  value: root
- name: ETCDCTL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "keelson.authSecret" . }}
      key: {{ .Values.auth.rbac.existingSecretPasswordKey }}
{{- end -}}
{{- end -}}

{{/* Render-time checks that JSON schema cannot express. */}}
{{- define "keelson.validate" -}}
{{- $v := .Values -}}
{{- if lt (int64 $v.config.electionTimeout) (mul 5 (int64 $v.config.heartbeatInterval)) -}}
{{- fail (printf "config.electionTimeout (%v ms) must be at least 5 times config.heartbeatInterval (%v ms), as etcd requires" $v.config.electionTimeout $v.config.heartbeatInterval) -}}
{{- end -}}
{{- $ports := list (int $v.ports.client) (int $v.ports.peer) (int $v.ports.metrics) -}}
{{- if ne (len (uniq $ports)) 3 -}}
{{- fail "ports.client, ports.peer and ports.metrics must differ" -}}
{{- end -}}
{{- range $side := list "client" "peer" -}}
{{- $t := index $v.tls $side -}}
{{- if and $t.enabled (eq $t.source "certManager") (not $v.tls.certManager.issuerRef.name) -}}
{{- fail (printf "tls.%s.source=certManager needs tls.certManager.issuerRef.name" $side) -}}
{{- end -}}
{{- end -}}
{{- if and $v.tls.client.enabled (ne $v.tls.client.source "auto") $v.tls.client.clientCertAuth (eq $v.tls.client.source "secret") (not $v.tls.client.clientSecretName) $v.helmTest.enabled -}}
{{- fail "tls.client.clientCertAuth with tls.client.source=secret: set tls.client.clientSecretName (a client certificate for `helm test`) or helmTest.enabled=false" -}}
{{- end -}}
{{- if and $v.auth.rbac.create (not $v.auth.rbac.existingSecret) (not $v.auth.rbac.rootPassword) -}}
{{- fail "auth.rbac.create needs auth.rbac.existingSecret (a Secret with the root password) or auth.rbac.rootPassword" -}}
{{- end -}}
{{- if and (eq $v.auth.token.type "jwt") (not $v.auth.token.privateKey.existingSecret) -}}
{{- fail "auth.token.type=jwt needs auth.token.privateKey.existingSecret (a Secret with the signing key)" -}}
{{- end -}}
{{- $managed := dict -}}
{{- range $arg := (include "keelson.memberArgs" . | fromJsonArray) -}}
{{- $flag := regexReplaceAll "^--([a-z0-9-]+).*$" $arg "${1}" -}}
{{- $_ := set $managed $flag true -}}
{{- end -}}
{{- range $arg := $v.extraArgs -}}
{{- $flag := regexReplaceAll "^--?([a-z0-9-]+).*$" $arg "${1}" -}}
{{- if hasKey $managed $flag -}}
{{- fail (printf "extraArgs: --%s is set by the chart; use its value instead (see values.yaml)" $flag) -}}
{{- end -}}
{{- end -}}
{{- range $env := $v.extraEnv -}}
{{- if hasPrefix "ETCD_" $env.name -}}
{{- $flag := $env.name | trimPrefix "ETCD_" | lower | replace "_" "-" -}}
{{- if hasKey $managed $flag -}}
{{- fail (printf "extraEnv: %s repeats --%s, which the chart sets on the command line (keelson refuses both at once)" $env.name $flag) -}}
{{- end -}}
{{- end -}}
{{- if eq $env.name "POD_NAME" -}}
{{- fail "extraEnv: POD_NAME is set by the chart" -}}
{{- end -}}
{{- end -}}
{{- end -}}
