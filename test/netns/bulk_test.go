package netns

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestBulkLoopback: both directions complete with every byte checked.
func TestBulkLoopback(t *testing.T) {
	RequireRoot(t)
	n, err := CreateNS(NewPrefix() + "-bulk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Delete() })
	h := &Host{NS: n, Label: "b0"}
	h.ServeBulk(t, 9100)
	for _, dir := range []BulkDir{BulkUp, BulkDown} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		res, err := n.Bulk(ctx, netip.MustParseAddrPort("127.0.0.1:9100"), dir, 8<<20+123, 5*time.Second)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if res.Done != res.Size || res.BadAt != -1 {
			t.Fatalf("%s: %+v", dir, res)
		}
	}
}

// TestBulkDetectsCorruption: one wrong byte is reported at its offset.
func TestBulkDetectsCorruption(t *testing.T) {
	const size, at = 3<<20 + 5, 1<<20 + 77
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		buf := make([]byte, 0, size)
		for off := int64(0); off < size; off += bulkChunk {
			buf = append(buf, patternAt(off, int(min(size-off, bulkChunk)))...)
		}
		buf[at] ^= 0x40
		_, _ = a.Write(buf)
		a.Close()
	}()
	got, bad, err := bulkReceive(b, size, 5*time.Second, time.Time{}, true)
	if err != nil || got != size || bad != at {
		t.Fatalf("got %d bytes, first bad byte %d, err %v; want %d, %d, nil", got, bad, err, size, at)
	}
}

// TestBulkStall: a stream that stops moving fails as a stall within the bound.
func TestBulkStall(t *testing.T) {
	RequireRoot(t)
	n, err := CreateNS(NewPrefix() + "-bulk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Delete() })
	h := &Host{NS: n, Label: "b0"}
	// Reads the header, sends 1000 good bytes, then nothing until closed.
	h.ServeTCP(t, 9100, func(c net.Conn) {
		var hdr [9]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil || binary.BigEndian.Uint64(hdr[1:]) == 0 {
			return
		}
		_, _ = c.Write(patternAt(0, 1000))
		_, _ = io.Copy(io.Discard, c)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := n.Bulk(ctx, netip.MustParseAddrPort("127.0.0.1:9100"), BulkDown, 1<<20, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "stall after 1000 of") || res.Done != 1000 {
		t.Fatalf("got %+v, %v; want a stall after 1000 bytes", res, err)
	}
}
