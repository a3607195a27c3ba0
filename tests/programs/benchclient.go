// benchclient: the benchmark's Go client (tests/src/bench, section "go"), built statically so
// that only syscall interception can route it. Prints one JSON summary line with the keys of
// bench_client's `http` and `bulk` modes:
//
//	benchclient http HOST:PORT PATH N WARMUP   sequential GETs on one keep-alive connection
//	benchclient bulk HOST:PORT PATH            one GET, body read and discarded
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"time"
)

// Deadline bounds every run, as bench_client's.
const Deadline = 120 * time.Second

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fail(err)
	}
	return n
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return -1
	}
	rank := int(float64(len(sorted))*p/100 + 0.999999)
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

func main() {
	if len(os.Args) < 4 {
		fail(fmt.Errorf("usage: benchclient http|bulk HOST:PORT PATH [N WARMUP]"))
	}
	mode, addr, path := os.Args[1], os.Args[2], os.Args[3]
	url := "http://" + addr + path
	client := &http.Client{Timeout: Deadline}
	start := time.Now()
	out := map[string]any{}
	switch mode {
	case "http":
		n, warmup := atoi(os.Args[4]), atoi(os.Args[5])
		var samples []float64
		errors := 0
		var firstError any
		for i := 0; i < warmup+n; i++ {
			if time.Since(start) > Deadline {
				fail(fmt.Errorf("deadline passed after %d requests", i))
			}
			t := time.Now()
			resp, err := client.Get(url)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			dt := float64(time.Since(t).Nanoseconds()) / 1e3
			if err != nil {
				errors++
				if firstError == nil {
					firstError = err.Error()
				}
				continue
			}
			if i >= warmup {
				samples = append(samples, dt)
			}
		}
		sort.Float64s(samples)
		out["n"] = len(samples)
		out["errors"] = errors
		out["first_error"] = firstError
		out["p50_us"] = percentile(samples, 50)
		out["p99_us"] = percentile(samples, 99)
	case "bulk":
		resp, err := client.Get(url)
		if err != nil {
			fail(err)
		}
		bytes, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			fail(err)
		}
		secs := time.Since(start).Seconds()
		out["streams"] = 1
		out["bytes"] = bytes
		out["secs"] = secs
		out["mib_s"] = float64(bytes) / (1024 * 1024) / secs
		out["errors"] = 0
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
	line, err := json.Marshal(out)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(line))
}
