// Command hello is the workload of test/cluster/smoke.sh: an HTTP server
// that answers with its pod's name, so a check can tell which pod a Service
// sent it to. With -get it is the client instead (the image has no shell
// or curl): it prints the body of one GET, for `kubectl exec`.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", ":8080", "address to serve on")
	get := flag.String("get", "", "GET this URL, print the body and exit")
	insecure := flag.Bool("insecure", false, "with -get: do not verify the server's certificate")
	flag.Parse()
	if *get != "" {
		os.Exit(fetch(*get, *insecure))
	}
	name, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", name)
	})
	log.Printf("hello: serving on %s", *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}

func fetch(url string, insecure bool) int {
	c := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: insecure}}, //nolint:gosec // a smoke test's choice
	}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(os.Stdout, resp.Body)
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, resp.Status)
		return 1
	}
	return 0
}
