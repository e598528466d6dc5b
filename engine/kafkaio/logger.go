package kafkaio

import (
	"errors"
	"net"
	"os"
	"strings"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
)

// ErrorLogger is a kafka-go ErrorLogger that writes to log at the level
// ReaderLogLevel gives each line: an idle partition's fetch timing out is
// debug, anything else a warning.
func ErrorLogger(log zerolog.Logger) kafka.Logger {
	return kafka.LoggerFunc(func(format string, args ...any) {
		log.WithLevel(ReaderLogLevel(format, args...)).Msgf(format, args...)
	})
}

// idleFetch starts the line kafka-go's Reader logs when a fetch ends in an
// error it has no case for; it then reconnects and fetches again.
const idleFetch = "the kafka reader got an unknown error reading partition"

// ReaderLogLevel is the level of one kafka-go Reader error line. A fetch
// is a long poll: the broker holds it up to MaxWait when the partition has
// nothing new, and kafka-go sets the connection's read deadline to that
// same MaxWait, so on an idle partition the deadline often fires first and
// the Reader reports "i/o timeout" before fetching again. That is the
// normal state of an idle topic, so it is debug; a timeout anywhere else
// (connecting, joining the group, committing) and every other error stay
// warnings.
func ReaderLogLevel(format string, args ...any) zerolog.Level {
	if strings.HasPrefix(format, idleFetch) {
		for _, a := range args {
			if err, ok := a.(error); ok && isTimeout(err) {
				return zerolog.DebugLevel
			}
		}
	}
	return zerolog.WarnLevel
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
