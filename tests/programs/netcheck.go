// netcheck: the network calls a Go service makes, one action per argument, one line each.
// Built twice by tests/tests/syscalls.rs (with and without cgo) and run in the pod and under
// mirrord, whose outputs must match. Standard library only.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

func get(url string) string {
	var peer string
	client := &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err == nil {
					peer = c.RemoteAddr().String()
				}
				return c, err
			},
		},
	}
	resp, err := client.Get(url)
	if err != nil {
		return "error=" + err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "error=" + err.Error()
	}
	text := strings.TrimSpace(string(body))
	// The service's view of the client: keep the address, drop the ephemeral port.
	if i := strings.LastIndex(text, ":"); strings.Contains(text, " peer ") && i > 0 {
		text = text[:i]
	}
	return fmt.Sprintf("peer=%s status=%d body=%q", peer, resp.StatusCode, text)
}

func lookup(name string) string {
	addrs, err := net.LookupHost(name)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) {
			return fmt.Sprintf("error notfound=%v", dnsErr.IsNotFound)
		}
		return "error=" + err.Error()
	}
	sort.Strings(addrs)
	return strings.Join(addrs, ",")
}

func udp(addr string) string {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "error=" + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping-go")); err != nil {
		return "error=" + err.Error()
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return "error=" + err.Error()
	}
	return fmt.Sprintf("peer=%s reply=%q", c.RemoteAddr(), buf[:n])
}

// udpTo sends from an unconnected socket (sendto with an address) and reads with recvfrom.
func udpTo(addr string) string {
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return "error=" + err.Error()
	}
	c, err := net.ListenPacket("udp", ":0")
	if err != nil {
		return "error=" + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.WriteTo([]byte("ping-go-unconnected"), to); err != nil {
		return "error=" + err.Error()
	}
	buf := make([]byte, 2048)
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		return "error=" + err.Error()
	}
	return fmt.Sprintf("from=%s reply=%q", from, buf[:n])
}

func main() {
	for _, action := range os.Args[1:] {
		kind, arg, _ := strings.Cut(action, "=")
		var out string
		switch kind {
		case "get":
			out = get(arg)
		case "lookup":
			out = lookup(arg)
		case "udp":
			out = udp(arg)
		case "udpto":
			out = udpTo(arg)
		default:
			fmt.Fprintf(os.Stderr, "unknown action %q\n", action)
			os.Exit(2)
		}
		fmt.Printf("%s %s\n", action, out)
	}
}
