// Go's own resolver (PreferGo, built with CGO_ENABLED=0 as most cloud-native binaries are):
// LookupIPAddr for each name on the command line. One line per name:
//
//	name <TAB> milliseconds <TAB> addresses, comma-separated <TAB> error ("" or NOTFOUND or why)
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	r := &net.Resolver{PreferGo: true}
	for _, name := range os.Args[1:] {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		t0 := time.Now()
		addrs, err := r.LookupIPAddr(ctx, name)
		ms := float64(time.Since(t0).Microseconds()) / 1e3
		cancel()
		ips := make([]string, 0, len(addrs))
		for _, a := range addrs {
			ips = append(ips, a.IP.String())
		}
		why := ""
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			why = "NOTFOUND"
		} else if err != nil {
			why = err.Error()
		}
		fmt.Printf("%s\t%.1f\t%s\t%s\n", name, ms, strings.Join(ips, ","), why)
	}
}
