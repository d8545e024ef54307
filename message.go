package caddysmtp

import "github.com/seed7b014b84/caddy-smtp/delivery"

// Message is one message for Deliver (see package delivery).
type Message = delivery.Message

// Report is what one delivery attempt did, per recipient.
type Report = delivery.Report

// RecipientReport is one recipient's outcome.
type RecipientReport = delivery.RecipientReport

// Interface guards
var _ delivery.Sender = (*App)(nil)
