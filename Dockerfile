# For users who build images with Docker (CI and test/cluster use
# `make images`, which needs no Docker: hack/mkimage and go-containerregistry).
# One file for the three images; pick one with --build-arg:
#
#   docker build --build-arg CMD=agent      -t detour.local/detour-agent:dev .
#   docker build --build-arg CMD=controller -t detour.local/detour-controller:dev .
#   docker build --build-arg CMD=echo       -t detour.local/detour-echo:dev .
#
# The binaries are static (CGO_ENABLED=0) and the BPF objects are embedded,
# so the image is the binary alone, like the one `make images` writes.
FROM golang:1.26 AS build
ARG CMD=agent
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/detour-bin ./cmd/${CMD}

FROM scratch
COPY --from=build /out/detour-bin /detour-bin
ENTRYPOINT ["/detour-bin"]
