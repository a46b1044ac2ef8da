package dataplane

// A VLAN tag in skb metadata on tc (issue 9, item 5). On receive the kernel
// moves an 802.1Q/802.1ad tag out of the frame into the skb
// (skb->vlan_present, vlan_tci) before tc runs — a NIC with rx-vlan-offload
// delivers it there, and __netif_receive_skb_core untags inline tags the
// same way — so xlb_tc sees an untagged Ethernet frame whose type is the
// inner protocol. Such a frame belongs to a VLAN that xlb does not serve
// and must pass untouched, as a tagged frame does on XDP.
//
// BPF_PROG_TEST_RUN does not let a test set vlan_present in the __sk_buff
// context (bpf_prog_test_run_skb refuses a non-zero vlan_present with
// EINVAL, checked on kernel 6.18), so a small tc program pushes the tag into the skb's
// metadata with bpf_skb_vlan_push (which leaves the frame's bytes as they
// are when no tag is present yet) and tail-calls xlb_tc.

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// htonsImm returns v in network byte order as a helper's immediate argument.
func htonsImm(v uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

// vlanWrapper returns a tc program that, when push is set, puts an 802.1Q
// VID 100 tag into the skb's metadata, then tail-calls xlb_tc. It returns
// 0x7ead if the tail call fails.
func vlanWrapper(t *testing.T, h *harness, push bool) *ebpf.Program {
	t.Helper()
	pa, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatalf("prog array: %v", err)
	}
	t.Cleanup(func() { pa.Close() })
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	if push {
		insns = append(insns,
			asm.Mov.Imm(asm.R2, htonsImm(0x8100)),
			asm.Mov.Imm(asm.R3, 100),
			asm.FnSkbVlanPush.Call(),
			asm.Mov.Reg(asm.R1, asm.R6))
	}
	insns = append(insns,
		asm.LoadMapPtr(asm.R2, pa.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, 0x7ead),
		asm.Return())
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, Instructions: insns, License: "GPL"})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("vlan wrapper: %+v", ve)
		}
		t.Fatalf("vlan wrapper: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	if err := pa.Put(uint32(0), h.objs.XlbTc); err != nil {
		t.Fatalf("prog array: %v", err)
	}
	return p
}

// TestPacketVLANMetadataTC: a frame whose VLAN tag is in skb metadata is
// passed by xlb_tc unchanged and counted as passed — a new flow and, after
// a flow was established untagged, packets of both its directions (the
// fast path's case). The same packets without the tag are translated
// through the same wrapper (control: the tail call reaches xlb_tc).
func TestPacketVLANMetadataTC(t *testing.T) {
	h := newHarness(t)
	tagged := prog{name: "tc+vlan", p: vlanWrapper(t, h, true), pass: tcNext, fwd: tcNext}
	plain := prog{name: "tc", p: vlanWrapper(t, h, false), pass: tcNext, fwd: tcNext}
	for _, f := range families {
		for _, pr := range protos {
			h.addService(svcSpec{vip: f.vip, proto: pr.proto, algo: algoRR, backends: []beSpec{{addr: f.be1}}})
		}
	}
	for _, f := range families {
		for _, pr := range protos {
			name := f.name + "/" + pr.name
			h.ctFlush()
			fwd := build(t, pktSpec{src: f.client, dst: f.vip, proto: pr.proto, flags: pr.flags})
			fwdX := build(t, pktSpec{src: f.client, dst: f.be1, proto: pr.proto, flags: pr.flags})
			rep := build(t, pktSpec{src: f.be1, dst: f.client, proto: pr.proto, flags: replyFlags(pr.proto)})
			repX := build(t, pktSpec{src: f.vip, dst: f.client, proto: pr.proto, flags: replyFlags(pr.proto)})

			passes := func(what string, in []byte) {
				t.Helper()
				before := h.global()
				ret, out := run(t, tagged, in, 0)
				after := h.global()
				if ret != tcNext {
					t.Errorf("%s: %s: verdict %#x, want pass (TC_ACT_UNSPEC)", name, what, ret)
				}
				sameBytes(t, name+": "+what, out, in)
				if after.Passed != before.Passed+1 {
					t.Errorf("%s: %s: global.passed %d -> %d, want +1", name, what, before.Passed, after.Passed)
				}
				if after.FwdNat+after.RevNat != before.FwdNat+before.RevNat {
					t.Errorf("%s: %s: counted as translated: %+v -> %+v", name, what, before, after)
				}
			}

			// New flow, tagged: not translated, no conntrack entry.
			passes("new flow", fwd)
			if n := h.ctCount(); n != 0 {
				t.Errorf("%s: tagged frame created %d conntrack entries", name, n)
			}
			// Establish the flow untagged (control), then the tagged packets
			// of both directions meet the fast path's conntrack hits.
			ret, out := run(t, plain, fwd, 0)
			if ret != tcNext {
				t.Fatalf("%s: untagged first packet: verdict %#x", name, ret)
			}
			sameBytes(t, name+": untagged first packet", out, fwdX)
			passes("established, forward", fwd)
			passes("established, reply", rep)
			// The flow itself is unaffected.
			_, out = run(t, plain, rep, 0)
			sameBytes(t, name+": untagged reply", out, repX)
		}
	}
}
