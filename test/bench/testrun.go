package main

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// progTestRunAttr is the BPF_PROG_TEST_RUN part of union bpf_attr.
type progTestRunAttr struct {
	ProgFd      uint32
	Retval      uint32
	DataSizeIn  uint32
	DataSizeOut uint32
	DataIn      uint64
	DataOut     uint64
	Repeat      uint32
	Duration    uint32
	CtxSizeIn   uint32
	CtxSizeOut  uint32
	CtxIn       uint64
	CtxOut      uint64
	Flags       uint32
	CPU         uint32
	BatchSize   uint32
	_           uint32
}

const bpfProgTestRun = 10

// testRun runs prog once per repeat on data with an optional context and
// returns the verdict and the kernel's mean duration per run in ns.
// cilium/ebpf's Benchmark cannot pass a context (ingress ifindex) and Run
// does not return the duration, hence the raw syscall. It resolves ifindexes
// in the calling thread's namespace.
func testRun(prog *ebpf.Program, data, ctx []byte, repeat uint32) (uint32, uint32, error) {
	out := make([]byte, len(data)+256)
	attr := progTestRunAttr{
		ProgFd:      uint32(prog.FD()),
		DataSizeIn:  uint32(len(data)),
		DataSizeOut: uint32(len(out)),
		DataIn:      uint64(uintptr(unsafe.Pointer(&data[0]))),
		DataOut:     uint64(uintptr(unsafe.Pointer(&out[0]))),
		Repeat:      repeat,
	}
	if len(ctx) > 0 {
		attr.CtxSizeIn = uint32(len(ctx))
		attr.CtxIn = uint64(uintptr(unsafe.Pointer(&ctx[0])))
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, bpfProgTestRun, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(data)
		runtime.KeepAlive(out)
		runtime.KeepAlive(ctx)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, 0, fmt.Errorf("BPF_PROG_TEST_RUN: %w", errors.Join(errno))
		}
		return attr.Retval, attr.Duration, nil
	}
}

// xdpCtx is struct xdp_md with the packet length and an ingress ifindex.
func xdpCtx(pktLen, ifindex int) []byte {
	b := make([]byte, 24)
	ne := func(off int, v uint32) { *(*uint32)(unsafe.Pointer(&b[off])) = v }
	ne(4, uint32(pktLen)) // data_end
	ne(12, uint32(ifindex))
	return b
}

// skbCtx is the head of struct __sk_buff up to and including ifindex (the
// kernel zero-fills the rest); test_run sets skb->dev from it.
func skbCtx(ifindex int) []byte {
	b := make([]byte, 44)
	*(*uint32)(unsafe.Pointer(&b[40])) = uint32(ifindex)
	return b
}
