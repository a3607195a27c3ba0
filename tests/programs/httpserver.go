// httpserver: a Go HTTP server (net/http, its own syscalls) for the incoming-traffic tests of
// tests/tests/syscalls.rs. Listens on the port given as the only argument, answers every
// request itself and prints one line per request, with the client's address as accept gave it.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
)

func main() {
	l, err := net.Listen("tcp", ":"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening")
	http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Printf("request %s %s peer=%s\n", r.Method, r.URL.Path, host)
		w.Header().Set("X-Served-By", "local-go")
		fmt.Fprintf(w, "go: %s %s\n", r.Method, r.URL.Path)
	}))
}
