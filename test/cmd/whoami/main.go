// Command whoami is a tiny backend for demos and end-to-end tests: it answers
// every HTTP request with its name and the client address it saw, so a test
// can tell which backend served it and whether the client IP was preserved.
// It can also serve a kube-proxy-style health endpoint for
// externalTrafficPolicy: Local tests.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	name := flag.String("name", "", "name to answer with (default: hostname)")
	listen := flag.String("listen", ":8080", "comma-separated listen addresses")
	health := flag.String("health-listen", "", "optional address for GET /healthz (kube-proxy healthCheckNodePort semantics)")
	healthy := flag.Bool("healthy", true, "initial /healthz answer: 200 when true, 503 when false (toggle with SIGUSR1)")
	udp := flag.String("udp-listen", "", "optional UDP address: replies to every datagram with the name")
	flag.Parse()
	if *name == "" {
		*name, _ = os.Hostname()
	}
	var ok atomic.Bool
	ok.Store(*healthy)

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s\n", *name, r.RemoteAddr)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	for _, addr := range strings.Split(*listen, ",") {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatalf("listen %s: %v", addr, err)
		}
		go func() { _ = srv.Serve(ln) }()
	}
	if *health != "" {
		hmux := http.NewServeMux()
		hmux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if ok.Load() {
				fmt.Fprintln(w, `{"localEndpoints": 1}`)
				return
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, `{"localEndpoints": 0}`)
		})
		hln, err := net.Listen("tcp", *health)
		if err != nil {
			log.Fatalf("listen %s: %v", *health, err)
		}
		go func() { _ = http.Serve(hln, hmux) }()
	}
	if *udp != "" {
		pc, err := net.ListenPacket("udp", *udp)
		if err != nil {
			log.Fatalf("listen udp %s: %v", *udp, err)
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(*name+" "+from.String()+"\n"), from)
			}
		}()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	for s := range sig {
		if s == syscall.SIGUSR1 {
			ok.Store(!ok.Load())
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
		return
	}
}
