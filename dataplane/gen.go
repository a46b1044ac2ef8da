package dataplane

// The eBPF objects are generated from bpf/ and committed so that `go build`
// needs no clang. `make generate` re-runs this; CI checks the output is fresh.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type svc_key -type svc_info -type backend -type ct_key -type ct_entry -type affinity_key -type affinity_entry -type allow_key -type if_addr -type svc_counters -type backend_counters -type global_counters -type xlb_cfg -type vip_key -type rev_nat_val xlb ../bpf/xlb.c -- -I../bpf
