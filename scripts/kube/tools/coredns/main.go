// Command coredns is CoreDNS with only the plugins the single-node cluster's DNS needs: it serves
// the cluster domain from the apiserver (kubernetes) and nothing else. There is deliberately no
// forward, grpc, etcd, cloud-provider or QUIC plugin, so it cannot send queries off the node.
//
// The directive order comes from CoreDNS's own plugin.cfg (core/dnsserver/zdirectives.go); a
// directive whose plugin is not imported here is rejected when a Corefile uses it.
// `coredns -plugins` lists what is compiled in.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
