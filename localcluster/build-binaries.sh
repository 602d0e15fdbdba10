#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, helm), the real node's kubelet and Kueue from the Go module proxy, once,
# into a cache outside the repository keyed by version. A warm cache makes this a no-op. There is
# no Docker engine and no release-download host here, so building from source is the only way.
#
#   localcluster/build-binaries.sh            # prints the bin directory on the last line
#   localcluster/build-binaries.sh kueue      # prints Kueue's directory (binary + chart) instead
#   PFO_CACHE=/some/dir localcluster/build-binaries.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${PFO_CACHE:-$HOME/.cache/paddle-finetune-operator}
bin="$cache/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
# Kueue has a directory of its own (the binary and the release's Helm chart, localcluster/kueue.py),
# so pinning another Kueue leaves the control plane's cache key alone.
kueue_dir="$cache/bin/kueue-$KUEUE_VERSION"
want=${1:-all}
[[ $want == all || $want == kueue ]] || { echo "usage: $0 [kueue]" >&2; exit 2; }
print_dir() { if [[ $want == kueue ]]; then echo "$kueue_dir"; else echo "$bin"; fi; }
work="$cache/build"
logs="$cache/logs"
# Warm cache: every binary is there, nothing to check against the network.
all_there=1
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet etcd kwok helm; do
  [[ -x $bin/$b ]] || all_there=0
done
[[ -x $kueue_dir/kueue && -f $kueue_dir/chart/Chart.yaml ]] || all_there=0
if (( all_there )); then print_dir; exit 0; fi
mkdir -p "$bin" "$kueue_dir" "$work" "$logs"
# One build at a time per cache (a bench and a test run starting cold together shared the work
# directories and logs, and one failed); the second waits and then finds the binaries built.
exec 9>"$cache/.build-binaries.lock"
flock 9
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[build-binaries %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# step NAME OUTPUT CMD...: run CMD unless OUTPUT exists, logging to $logs/NAME.log.
step() {
  local name=$1 out=$2; shift 2
  if [[ -x $out ]]; then return 0; fi
  log "building $name (log: $logs/$name.log)"
  local t0=$SECONDS
  if ! "$@" >"$logs/$name.log" 2>&1; then
    log "FAILED: $name; last lines of $logs/$name.log:"
    tail -n 30 "$logs/$name.log" >&2
    exit 1
  fi
  log "built $name in $((SECONDS - t0))s"
}

# --- Kubernetes: a helper module replacing each staging module by its published v0.Y.Z tag.
k8s_module() {
  local dir="$work/k8s-$K8S_VERSION" minor=${K8S_VERSION#v1.}
  local staging="v0.$minor"
  mkdir -p "$dir"
  [[ -f $dir/go.mod.done ]] && return 0
  curl -fsS "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/$K8S_VERSION.mod" >"$dir/upstream.mod"
  {
    echo "module pfo.local/k8sbuild"
    grep -E '^(go|godebug) ' "$dir/upstream.mod"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    grep -oE '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$dir/upstream.mod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  } >"$dir/go.mod"
  touch "$dir/go.mod.done"
}

k8s_ldflags() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local f="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$f"
}

build_k8s() {
  local cmd=$1
  (cd "$work/k8s-$K8S_VERSION" && go build -trimpath -tags selinux,notest \
    -ldflags "$(k8s_ldflags)" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" && mv "$bin/$cmd.tmp" "$bin/$cmd")
}

simple_module() {  # simple_module DIR MODULE VERSION: a helper module requiring MODULE@VERSION
  local dir=$1 mod=$2 ver=$3
  mkdir -p "$dir"
  [[ -f $dir/go.mod ]] || printf 'module pfo.local/%s\n\ngo 1.26\n\nrequire %s %s\n' "$(basename "$dir")" "$mod" "$ver" >"$dir/go.mod"
}

build_in() {  # build_in DIR OUT PKG [ldflags]
  local dir=$1 out=$2 pkg=$3 ldflags=${4:-}
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg" && mv "$out.tmp" "$out")
}

t_all=$SECONDS
k8s_module
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
  step "$c" "$bin/$c" build_k8s "$c"
done

simple_module "$work/etcd-$ETCD_VERSION" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
step etcd "$bin/etcd" build_in "$work/etcd-$ETCD_VERSION" "$bin/etcd" go.etcd.io/etcd/server/v3 \
  "-X go.etcd.io/etcd/api/v3/version.GitSHA=release"

simple_module "$work/kwok-$KWOK_VERSION" sigs.k8s.io/kwok "$KWOK_VERSION"
step kwok "$bin/kwok" build_in "$work/kwok-$KWOK_VERSION" "$bin/kwok" sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"

simple_module "$work/helm-$HELM_VERSION" helm.sh/helm/v3 "$HELM_VERSION"
step helm "$bin/helm" build_in "$work/helm-$HELM_VERSION" "$bin/helm" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

# --- Kueue: its go.mod has no replace lines, so a plain helper module works. The Helm chart of the
# same module version (the manifests localcluster/kueue.py installs) is copied beside the binary.
simple_module "$work/kueue-$KUEUE_VERSION" sigs.k8s.io/kueue "$KUEUE_VERSION"
step kueue "$kueue_dir/kueue" build_in "$work/kueue-$KUEUE_VERSION" "$kueue_dir/kueue" sigs.k8s.io/kueue/cmd/kueue \
  "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION -X sigs.k8s.io/kueue/pkg/version.GitCommit=unknown -X sigs.k8s.io/kueue/pkg/version.BuildDate=1970-01-01T00:00:00Z"
if [[ ! -f $kueue_dir/chart/Chart.yaml ]]; then
  src=$(cd "$work/kueue-$KUEUE_VERSION" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
  rm -rf "$kueue_dir/chart.tmp"
  cp -r "$src/charts/kueue" "$kueue_dir/chart.tmp" && chmod -R u+w "$kueue_dir/chart.tmp"
  mv "$kueue_dir/chart.tmp" "$kueue_dir/chart"
fi

# Each binary must report its pinned version (tools such as Helm's kubeVersion checks parse it).
verify() {  # verify NAME EXPECTED CMD...
  local name=$1 want=$2; shift 2
  local got; got=$("$@" 2>&1)
  if [[ $got != *"$want"* ]]; then
    log "FAILED: $name reports '$got', expected '$want' (rebuild: rm $bin/$name)"
    exit 1
  fi
}
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  verify "$c" "Kubernetes $K8S_VERSION" "$bin/$c" --version
done
verify kubectl "$K8S_VERSION" "$bin/kubectl" version --client
verify etcd "etcd Version: ${ETCD_VERSION#v}" "$bin/etcd" --version
verify kwok "kwok version $KWOK_VERSION" "$bin/kwok" --version
verify helm "$HELM_VERSION" "$bin/helm" version --template '{{.Version}}'
# Kueue has no --version: it logs its version at startup, then stops at the empty kubeconfig.
kueue_startup_log() { timeout 20 "$kueue_dir/kueue" --kubeconfig /dev/null 2>&1 || true; }
verify kueue "\"gitVersion\":\"$KUEUE_VERSION\"" kueue_startup_log

(( SECONDS - t_all > 5 )) && log "all binaries ready in $((SECONDS - t_all))s"
print_dir
