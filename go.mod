module github.com/listenwatch/listenwatch

go 1.26.8

require (
	github.com/cilium/ebpf v0.22.0
	github.com/rs/zerolog v1.34.0
	golang.org/x/sys v0.43.0
)

require (
	github.com/mattn/go-colorable v0.1.13 // indirect
	github.com/mattn/go-isatty v0.0.19 // indirect
)

tool github.com/cilium/ebpf/cmd/bpf2go
