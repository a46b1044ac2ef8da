// Command bench measures the xlb datapath and writes docs/benchmarks.md.
// It needs root, clang-free (generated objects are committed), and iperf3
// and wrk for the TCP/HTTP sections (skipped with a note when absent).
//
//	go run ./test/bench -out docs/benchmarks.md
//
// Nothing here asserts: speed is reported as ratios against baselines
// measured in the same run, interleaved (A B A B ...) to spread the noise
// of a shared machine over every variant.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"time"
)

type config struct {
	out      string
	sample   time.Duration
	rounds   int
	sections map[string]bool
	services int
	ctFlows  int
	// health and bgp sections (control plane)
	healthKills int
	bgpServices int
	bgpKills    int
}

func main() {
	if runListenerHelper() { // child process of the health section
		return
	}
	var cfg config
	var sections string
	flag.StringVar(&cfg.out, "out", "docs/benchmarks.md", "markdown report to write")
	flag.DurationVar(&cfg.sample, "sample", 3*time.Second, "duration of one throughput sample")
	flag.IntVar(&cfg.rounds, "rounds", 3, "interleaved rounds per comparison")
	flag.StringVar(&sections, "sections", "micro,ct10m,pps,newflow,tcp,gro,http,health,bgp", "comma-separated sections to run: micro (ns/packet, apply time, memory), ct10m (10M-flow conntrack: memory, new-flow cost), pps, newflow (packets/s when every packet is a new flow), tcp, http, health (dead-backend detection, prober CPU), bgp (VIP announce/withdraw at a BIRD router)")
	flag.IntVar(&cfg.services, "services", 10000, "services loaded for the micro benchmark")
	flag.IntVar(&cfg.ctFlows, "ct-entries", 1000000, "conntrack entries pre-filled for the micro benchmark")
	flag.IntVar(&cfg.healthKills, "health-kills", 20, "backend kills measured by the health section")
	flag.IntVar(&cfg.bgpServices, "bgp-services", 20, "new services whose announcement the bgp section times")
	flag.IntVar(&cfg.bgpKills, "bgp-kills", 10, "last-backend deaths whose withdrawal the bgp section times")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("bench needs root (namespaces, eBPF)")
	}
	cfg.sections = map[string]bool{}
	for _, s := range strings.Split(sections, ",") {
		switch s = strings.TrimSpace(s); s {
		case "micro", "ct10m", "pps", "newflow", "tcp", "gro", "http", "health", "bgp":
			cfg.sections[s] = true
		case "":
		default:
			log.Fatalf("-sections: unknown %q (allowed micro, ct10m, pps, newflow, tcp, gro, http, health, bgp)", s)
		}
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"health-kills", cfg.healthKills}, {"bgp-services", cfg.bgpServices}, {"bgp-kills", cfg.bgpKills}} {
		if f.v < 1 || f.v > 90 {
			log.Fatalf("-%s=%d: allowed 1..90", f.name, f.v)
		}
	}
	if cfg.rounds < 1 || cfg.rounds > 20 {
		log.Fatalf("-rounds=%d: allowed 1..20", cfg.rounds)
	}
	if cfg.sample < 500*time.Millisecond || cfg.sample > 30*time.Second {
		log.Fatalf("-sample=%v: allowed 0.5s..30s", cfg.sample)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	// Hard bound on the whole run (every section: ~15 min on 2 cores).
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()

	rep := newReport()
	start := time.Now()
	run := func(name string, fn func(context.Context, config, *report) error) {
		if !cfg.sections[name] {
			return
		}
		log.Printf("section %s", name)
		t0 := time.Now()
		if err := fn(ctx, cfg, rep); err != nil {
			log.Printf("section %s failed: %v", name, err)
			rep.failed(name, err)
		}
		log.Printf("section %s done in %v", name, time.Since(t0).Round(time.Millisecond))
	}
	run("micro", runMicro)
	run("ct10m", runCT10M)
	run("pps", runPPS)
	run("newflow", runNewflow)
	run("tcp", runTCP)
	run("gro", runGRO)
	run("http", runHTTP)
	run("health", runHealth)
	run("bgp", runBGP)
	rep.elapsed = time.Since(start)
	md := rep.markdown(cfg)
	if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
		log.Fatalf("write %s: %v", cfg.out, err)
	}
	fmt.Print(md)
	log.Printf("wrote %s", cfg.out)
}
