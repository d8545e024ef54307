package l4submission_test

// The smtp app, registered for the tests that run Caddy with it. (An
// external test package: the app's package imports this one, to register
// it, so the tests inside it cannot import the app.)
import _ "github.com/seed7b014b84/caddy-smtp"
