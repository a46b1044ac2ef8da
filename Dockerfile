# Images for xlbd and xlb-ccm (and xlbctl, shipped in both).
#   docker build --target xlbd    -t xlb-dev/xlbd .
#   docker build --target xlb-ccm -t xlb-dev/xlb-ccm .
# The eBPF objects are committed (dataplane/xlb_bpfel.o), so the build needs
# no clang: a plain static Go build.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/xlb-dev/xlb/internal/version.Version=${VERSION}" \
      -o /out/ ./cmd/xlbd ./cmd/xlb-ccm ./cmd/xlbctl

# xlbd needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN (bpffs),
# host networking and /sys/fs/bpf from the host: see manifests/xlbd-daemonset.yaml.
FROM gcr.io/distroless/static-debian12 AS xlbd
COPY --from=build /out/xlbd /out/xlbctl /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/xlbd"]

FROM gcr.io/distroless/static-debian12:nonroot AS xlb-ccm
COPY --from=build /out/xlb-ccm /out/xlbctl /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/xlb-ccm"]
