# The swarmpull image the Kubernetes manifests run (deploy/kubernetes): the supernode,
# the node daemon and `swarmpull containerd-config`, all one command line.
#   docker build -t swarmpull:0.1.0 .
# Two stages: the build stage installs the package into a virtualenv; the run stage gets
# only that virtualenv (no pip cache, no build tools) and runs as an unprivileged user.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/swarmpull
WORKDIR /src
COPY pyproject.toml README.md ./
COPY swarmpull ./swarmpull
COPY supernode ./supernode
COPY peer ./peer
COPY registry_proxy ./registry_proxy
COPY loadtest ./loadtest
RUN /opt/swarmpull/bin/pip install . && /opt/swarmpull/bin/swarmpull --version

FROM python:3.11-slim-bookworm
COPY --from=build /opt/swarmpull /opt/swarmpull
# 65532: the conventional "nonroot" id; the manifests set the same id. The node
# DaemonSet runs its containerd-hosts sidecar as root (it writes the host's
# /etc/containerd/certs.d), everything else as this user.
RUN groupadd --system --gid 65532 swarmpull \
    && useradd --system --uid 65532 --gid swarmpull --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin swarmpull
ENV PATH=/opt/swarmpull/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["swarmpull"]
CMD ["--help"]
