package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/bgp"
	"github.com/xlb-dev/xlb/internal/daemon/fakedp"
	"github.com/xlb-dev/xlb/internal/state"
)

// cursorDP rejects every conntrack cursor the way the eBPF datapath
// rejects one it did not hand out.
type cursorDP struct{ *fakedp.Fake }

func (d cursorDP) Flows(ctx context.Context, f dataplane.FlowFilter) ([]dataplane.Flow, string, error) {
	if f.After != "" {
		return nil, "", &dataplane.ValidationError{Field: "after", Value: f.After, Allowed: "a cursor returned by a previous call"}
	}
	return d.Fake.Flows(ctx, f)
}

// A bad ?after= cursor is the client's mistake: 400 naming the parameter,
// its value and what is allowed; not a 500.
func TestFlowsBadCursorIsInvalid(t *testing.T) {
	m := NewManager(ManagerConfig{Dataplane: cursorDP{fakedp.New("eth0")}, Store: &memStore{}, Logger: slog.Default()})
	_, err := m.Flows(context.Background(), dataplane.FlowFilter{Limit: 10, After: "!!"})
	var e *api.Error
	if !errors.As(err, &e) || e.Code != api.CodeInvalid || e.Field != "after" || e.Value != "!!" || e.Allowed == "" {
		t.Fatalf("bad cursor: %#v, want code invalid, field after, value !!, allowed set", err)
	}
}

type memBGPStore struct {
	mu  sync.Mutex
	cfg state.BGPConfig
}

func (s *memBGPStore) LoadBGP(context.Context) (state.BGPConfig, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg, nil
}

func (s *memBGPStore) SaveBGP(_ context.Context, c state.BGPConfig) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg = c
	return nil
}

// Concurrent PUT /v1/bgp/peers/{address} of different peers must all be
// kept: each change is computed from the peer set it is applied to, not
// from a copy taken before another change committed.
func TestBGPPeerConcurrentPutsKeepEveryPeer(t *testing.T) {
	const n = 64
	for round := 0; round < 20; round++ {
		store := &memBGPStore{}
		c := NewBGPController(bgp.New(slog.New(slog.DiscardHandler)), store, slog.New(slog.DiscardHandler))
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				addr := fmt.Sprintf("192.0.2.%d", i+1)
				if _, _, err := c.PutBGPPeer(context.Background(), addr, api.BGPPeer{ASN: 65000}); err != nil {
					t.Errorf("put %s: %v", addr, err)
				}
			})
		}
		wg.Wait()
		list, err := c.ListBGPPeers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != n || len(store.cfg.Peers) != n {
			t.Fatalf("round %d: %d peers listed, %d persisted after %d concurrent creates, want %d", round, len(list.Items), len(store.cfg.Peers), n, n)
		}
		// Every peer deleted concurrently twice: exactly one delete of each
		// succeeds, the other is not found.
		var mu sync.Mutex
		ok, notFound := 0, 0
		for i := range 2 * n {
			wg.Go(func() {
				err := c.DeleteBGPPeer(context.Background(), fmt.Sprintf("192.0.2.%d", i%n+1))
				var e *api.Error
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case errors.As(err, &e) && e.Code == api.CodeNotFound:
					notFound++
				default:
					t.Errorf("delete: %v", err)
				}
			})
		}
		wg.Wait()
		if ok != n || notFound != n || len(store.cfg.Peers) != 0 {
			t.Fatalf("round %d: %d deletes succeeded, %d not found, %d peers left; want %d, %d, 0", round, ok, notFound, len(store.cfg.Peers), n, n)
		}
	}
}

// ctxDP fails an Apply whose context is done, like the eBPF datapath
// between its write phases.
type ctxDP struct{ *fakedp.Fake }

func (d ctxDP) Apply(ctx context.Context, desired []dataplane.Service) (dataplane.ApplyResult, error) {
	if err := ctx.Err(); err != nil {
		return dataplane.ApplyResult{}, err
	}
	return d.Fake.Apply(ctx, desired)
}

// The prober calls Reconcile with a context that ends at shutdown; a
// health change racing the shutdown must still be applied completely, and
// must not mark the datapath unprogrammed (which withdraws every VIP).
func TestReconcileSurvivesCancelledContext(t *testing.T) {
	dp := ctxDP{fakedp.New("eth0")}
	var announced [][]api.Service
	m := NewManager(ManagerConfig{Dataplane: dp, Store: &memStore{}, Logger: slog.New(slog.DiscardHandler),
		Announce: func(_ context.Context, s []api.Service) { announced = append(announced, s) }})
	if err := m.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc := api.Service{Name: "web", Spec: api.ServiceSpec{VIPs: []string{"192.0.2.10"}, Port: 80, Protocol: "tcp",
		Backends: []api.Backend{{Address: "10.0.0.1", Port: 80}}}}
	if _, _, err := m.PutService(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Reconcile(ctx); err != nil {
		t.Fatalf("Reconcile with a cancelled context: %v", err)
	}
	if ready, reason := m.Ready(); !ready {
		t.Fatalf("not ready after Reconcile: %s", reason)
	}
	if last := announced[len(announced)-1]; len(last) != 1 {
		t.Fatalf("last announcement %v, want the service still announced", last)
	}
}
