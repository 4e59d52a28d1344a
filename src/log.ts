/**
 * Structured logs: JSON lines through pino, one formatter for every line. Secrets and message bodies are
 * never passed in; keys are named by number and thumbprint.
 *
 * Lines to stdout are batched: written once LOG_BATCH_BYTES have gathered, and at least every
 * LOG_FLUSH_MS, so a busy proxy makes one write(2) per few dozen transactions instead of one per line
 * (during a backscatter flood the log write was one system call in four). pino flushes what is left
 * when the process exits; only a SIGKILL can lose the last LOG_FLUSH_MS of lines.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export const LOG_BATCH_BYTES = 4096;
export const LOG_FLUSH_MS = 200;

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options = { level, base: { app: 'batv-proxy' }, timestamp: pino.stdTimeFunctions.isoTime };
  return pino(options, destination ?? batchedStdout());
}

/** stdout through sonic-boom with a minimum write size, flushed by a timer when anything is waiting. */
function batchedStdout(): DestinationStream & { flush(cb?: (err?: Error) => void): void } {
  const sonic = pino.destination({ sync: false, minLength: LOG_BATCH_BYTES });
  let waiting = false;
  const timer = setInterval(() => {
    if (!waiting) return;
    waiting = false;
    sonic.flush();
  }, LOG_FLUSH_MS);
  timer.unref();
  sonic.on('close', () => clearInterval(timer));
  return {
    write(line: string) {
      waiting = true;
      return sonic.write(line);
    },
    flush(cb?: (err?: Error) => void) {
      waiting = false;
      sonic.flush(cb);
    },
  };
}

/** A logger that drops everything (tests, CLI verbs). */
export const silentLogger: Logger = pino({ level: 'silent' });
