package provider

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/provider/config"
)

// Dataplane is what the provider needs of one xlbd. *lbclient.Client
// implements it; tests may use an in-memory fake.
type Dataplane interface {
	ListServices(ctx context.Context, selector map[string]string) (api.ServiceList, error)
	BulkReplace(ctx context.Context, b api.BulkReplace) (api.BulkResult, error)
	Status(ctx context.Context) (api.Status, error)
}

// NamedDataplane is a Dataplane with the name used in events and logs.
type NamedDataplane struct {
	Name      string
	Dataplane Dataplane
}

// DialDataplanes builds lbclient clients for the cloud-config dataplanes.
// It reads the token and TLS files once so a wrong path fails at startup.
func DialDataplanes(cfg *config.Config) ([]NamedDataplane, error) {
	var out []NamedDataplane
	for _, d := range cfg.Dataplanes {
		c, err := lbclient.New(lbclient.Config{
			Endpoint:  d.Endpoint,
			TokenFile: d.TokenFile,
			TLS:       lbclient.TLSConfig{CAFile: d.CAFile, CertFile: d.CertFile, KeyFile: d.KeyFile, ServerName: d.ServerName},
			UserAgent: "xlb-ccm/" + api.Version,
		})
		if err != nil {
			return nil, fmt.Errorf("dataplane %s: %w", d.Name, err)
		}
		out = append(out, NamedDataplane{Name: d.Name, Dataplane: c})
	}
	return out, nil
}

// dataplane tracks what the re-sync loop knows about one xlbd.
type dataplane struct {
	name string
	dp   Dataplane

	mu      sync.Mutex
	bootID  string // bootID of the last full sync ("" = never synced)
	healthy bool   // last status poll succeeded
	dirty   bool   // a change failed since the last full sync
}

func (d *dataplane) markDirty() {
	d.mu.Lock()
	d.dirty = true
	d.mu.Unlock()
}

// fanOutResult is the outcome of one operation on every dataplane.
type fanOutResult struct {
	total  int
	failed []error // one per failed dataplane, naming it
}

// met applies the success policy:
//   - all: every dataplane took the change (the default: status is only
//     written when traffic can arrive through any of them);
//   - quorum: a strict majority took it;
//   - any: at least one took it.
//
// Dataplanes that failed are marked dirty and get a full re-sync as soon as
// they answer again, so with quorum/any they catch up without a retry of
// the Service.
func (r fanOutResult) met(policy string) bool {
	ok := r.total - len(r.failed)
	switch policy {
	case config.SuccessAny:
		return ok >= 1
	case config.SuccessQuorum:
		return ok > r.total/2
	default:
		return ok == r.total
	}
}

func (r fanOutResult) err() error { return errors.Join(r.failed...) }

// fanOut runs fn on every dataplane concurrently.
func fanOut(ctx context.Context, dps []*dataplane, fn func(context.Context, *dataplane) error) fanOutResult {
	res := fanOutResult{total: len(dps)}
	errs := make([]error, len(dps))
	var wg sync.WaitGroup
	for i, d := range dps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, d); err != nil {
				errs[i] = fmt.Errorf("dataplane %s: %w", d.name, err)
				d.markDirty()
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			res.failed = append(res.failed, e)
		}
	}
	return res
}
