package pktgen

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/test/netns"
)

// TestGeneratorReachesSink sends live frames from the client straight to a
// backend (routed by the LB namespace) and checks the backend's sink counts
// them.
func TestGeneratorReachesSink(t *testing.T) {
	topo := netns.New(t, netns.Options{Backends: 1})
	b := topo.Backends[0]
	sink, err := NewSink(5353)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	if err := b.Do(func() error { return sink.Attach(b.Link.Index) }); err != nil {
		t.Fatal(err)
	}
	frame, err := UDPFrame(topo.Client.Link.MAC, topo.LB.ClientLink.MAC,
		netip.AddrPortFrom(topo.Client.Link.Addr4, 10000), netip.AddrPortFrom(b.Link.Addr4, 5353))
	if err != nil {
		t.Fatal(err)
	}
	gen, err := NewGenerator(frame, 10000, 16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gen.Close() })
	// The LB resolves the backend's MAC on the first packet (which it may
	// drop); ping first so the measurement starts on a warm neighbour.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := topo.LB.Run(ctx, "ping", "-c1", "-W2", b.Link.Addr4.String()); err != nil {
		t.Fatal(err)
	}
	var sent uint64
	err = topo.Client.Do(func() error {
		var err error
		sent, err = gen.Run(ctx, topo.Client.Link.Index, 200*time.Millisecond, 1000)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	netns.Poll(t, 5*time.Second, func() error {
		n, err := sink.Count()
		if err != nil {
			return err
		}
		if n == 0 {
			return context.DeadlineExceeded
		}
		t.Logf("sent %d, sink counted %d", sent, n)
		return nil
	})
}
