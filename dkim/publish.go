package dkim

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"go.uber.org/zap"
)

// republishAfter is how long a record set through the provider is not set
// again while it does not resolve yet (DNS providers can take minutes to
// serve a change).
const republishAfter = 10 * time.Minute

// zoneOf returns the zone, with the final dot, that a record name goes
// into: the configured one, or the one whose SOA the name is under.
func (s *Signer) zoneOf(ctx context.Context, sc *signerConf, name string) (string, error) {
	if z := sc.publish.Zone; z != "" {
		return strings.TrimSuffix(strings.ToLower(z), ".") + ".", nil
	}
	zone, err := certmagic.FindZoneByFQDN(ctx, s.log, name, certmagic.RecursiveNameservers(s.nameservers()))
	if err != nil {
		return "", fmt.Errorf("finding the zone of %s: %w", name, err)
	}
	return zone, nil
}

// nameservers returns Options.Nameservers as certmagic wants them.
func (s *Signer) nameservers() []string {
	var out []string
	for _, ns := range s.opts.Nameservers {
		ns = strings.TrimPrefix(strings.TrimPrefix(ns, "udp://"), "tcp://")
		if strings.Contains(ns, "://") {
			continue // DNS over TLS: certmagic asks over UDP and TCP only
		}
		out = append(out, ns)
	}
	return out
}

// publish sets k's TXT record through sc's provider, unless the zone
// already has it or it was set a moment ago.
func (s *Signer) publish(ctx context.Context, sc *signerConf, k *Key) error {
	id := k.Name() + " " + k.pub
	s.mu.Lock()
	last, ok := s.published[id]
	s.mu.Unlock()
	if ok && s.opts.Now().Sub(last) < republishAfter {
		return nil
	}
	zone, err := s.zoneOf(ctx, sc, k.Name())
	if err != nil {
		return err
	}
	rel := libdns.RelativeName(k.Name(), zone)
	p := sc.publish.Provider
	recs, err := p.GetRecords(ctx, zone)
	if err != nil {
		return fmt.Errorf("reading zone %s: %w", zone, err)
	}
	present := false
	for _, r := range recs {
		rr := r.RR()
		if rr.Type == "TXT" && strings.EqualFold(rr.Name, rel) {
			if pub, ok := recordKey(rr.Data); ok && pub == k.pub {
				present = true
			}
		}
	}
	if !present {
		rec := k.Record()
		if _, err := p.SetRecords(ctx, zone, []libdns.Record{libdns.TXT{Name: rel, TTL: sc.ttl, Text: rec.Text}}); err != nil {
			return fmt.Errorf("setting %s TXT in zone %s: %w", rel, zone, err)
		}
		s.log.Info("dkim key record published", zap.String("zone", zone), zap.String("record", rec.ZoneLine()))
	}
	s.mu.Lock()
	s.published[id] = s.opts.Now()
	s.mu.Unlock()
	return nil
}

// retire removes a retired key's record when the provider can delete
// records; otherwise it says that it may be removed by hand.
func (s *Signer) retire(ctx context.Context, sc *signerConf, selector string) error {
	name := selector + "._domainkey." + sc.domain + "."
	if sc.publish == nil {
		s.log.Info("dkim: a retired key's record may be removed from DNS now", zap.String("record", name))
		return nil
	}
	del, ok := sc.publish.Provider.(libdns.RecordDeleter)
	if !ok {
		s.log.Info("dkim: a retired key's record may be removed from DNS now (the DNS provider cannot delete records)",
			zap.String("record", name))
		return nil
	}
	zone, err := s.zoneOf(ctx, sc, name)
	if err != nil {
		return err
	}
	rel := libdns.RelativeName(name, zone)
	if _, err := del.DeleteRecords(ctx, zone, []libdns.Record{libdns.RR{Name: rel, Type: "TXT"}}); err != nil {
		return fmt.Errorf("deleting %s TXT in zone %s: %w", rel, zone, err)
	}
	s.log.Info("dkim: retired key record removed", zap.String("zone", zone), zap.String("record", name))
	return nil
}
