# Two commands do all set-up on a fresh machine: `make accept` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ENV    ?= local
PYTEST_ARGS ?=

.PHONY: accept test test-fast install bench clean system-deps gpu-check e2e e2e-cluster e2e-cluster-down e2e-cluster-deps \
	pulumi-tools e2e-pulumi

$(BIN)/dcforge: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from the pinned CPU build, so nothing else can pull a CUDA build
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(BIN)/dcforge

install: $(BIN)/dcforge

accept: install
	$(BIN)/dcforge accept --env $(ENV)

# System tools the Ansible tests need (debootstrap for the chroot target, gpg to sign the local test mirror), fio
# for the storage check, and what the multi-node tests need (sshd in network namespaces, ip/tc, iperf3; perftest's
# ib_write_bw for the network check's RDMA pairs), Prometheus and its Pushgateway for the metrics tests (promtool
# comes with prometheus):
# installed with apt only when missing and only as root; otherwise those tests skip and say why.
system-deps:
	@missing=""; command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	command -v gpg >/dev/null || missing="$$missing gnupg"; \
	command -v fio >/dev/null || missing="$$missing fio"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v iperf3 >/dev/null || missing="$$missing iperf3"; \
	command -v ib_write_bw >/dev/null || missing="$$missing perftest"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-pushgateway >/dev/null || missing="$$missing prometheus-pushgateway"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi

test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# GPU verification: every GPU code path on this machine's GPUs, judged and reported like `accept` (stacks/Pulumi.gpu.yaml).
# On PyPI, torch==2.13.0 for Linux x86_64 is the CUDA build; the local CPU wheel makes this stop with the reason.
# SIGINT at the time limit keeps the report of everything measured so far.
GPU_CHECK_S ?= 480
gpu-check: install
	@$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else \
		f'gpu-check: torch {torch.__version__} sees no CUDA GPU (a CPU build, or no GPU here): nothing to verify')"
	$(BIN)/python -m pytest -m gpu -q -p no:cacheprovider tests/unit
	timeout --signal=INT --kill-after=30 $(GPU_CHECK_S) $(BIN)/dcforge accept --env gpu

# End-to-end suite on a real cluster (README: end-to-end tests): DCFORGE_E2E_KUBECONFIG names it, DCFORGE_E2E_IMAGE
# the acceptance image loaded there. Without DCFORGE_E2E_KUBECONFIG every test skips and says why.
e2e: install
	$(BIN)/python -m pytest -m e2e -v tests/e2e $(PYTEST_ARGS)

# A throwaway multi-node cluster for `make e2e` (docs/e2e-cluster.md; root, no Docker): Kubernetes built from the
# k8s.io/kubernetes module (cached in $(E2E_CLUSTER_CACHE), 30-60 min the first time), etcd/containerd/runc/CNI
# from Debian, the acceptance image from a debootstrap root filesystem; E2E_WORKERS worker nodes. It prints the
# kubeconfig: DCFORGE_E2E_KUBECONFIG=<it> make e2e. Not part of `make test`.
E2E_WORKERS ?= 3
E2E_CLUSTER_CACHE ?= $(HOME)/.cache/dcforge-cluster
export DCFORGE_CLUSTER_CACHE = $(E2E_CLUSTER_CACHE)
e2e-cluster-deps:
	@missing=""; for p in etcd-server:etcd containerd:containerd runc:runc containernetworking-plugins:/usr/lib/cni/bridge \
		iptables:iptables debootstrap:debootstrap gcc:gcc bc:bc openssl:openssl iproute2:tc; do \
		command -v $${p#*:} >/dev/null || [ -x $${p#*:} ] || missing="$$missing $${p%%:*}"; done; \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi

e2e-cluster: install e2e-cluster-deps
	tests/e2e/cluster/build.sh
	tests/e2e/cluster/images.sh $(abspath $(VENV))
	tests/e2e/cluster/up.sh $(E2E_WORKERS)

e2e-cluster-down:
	tests/e2e/cluster/down.sh

# The Pulumi engine `dcforge preview|up|destroy` drive (docs/pulumi.md): the CLI and the Kubernetes provider built
# with Go from the module versions pinned in tools/pulumi/ into $DCFORGE_PULUMI_HOME (default ~/.cache/dcforge-pulumi),
# outside git; a second run reuses them. Opt-in: `make test` runs the stack under Pulumi's mocks and needs no engine.
pulumi-tools:
	tools/pulumi/build.sh

# The real-engine suite (tests/e2e_pulumi/): the engine of `make pulumi-tools` against the cluster of
# DCFORGE_E2E_KUBECONFIG, or a throw-away control plane on loopback when its binaries are found (etcd-server from
# Debian, kube-apiserver in $DCFORGE_KUBE_BIN). In `make test` these tests skip and say so.
e2e-pulumi: install pulumi-tools
	DCFORGE_E2E_PULUMI=1 $(BIN)/python -m pytest -m e2e -v tests/e2e_pulumi $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) reports build *.egg-info
