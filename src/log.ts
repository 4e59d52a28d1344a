/**
 * Structured logs: JSON lines through pino, one formatter for every line. Secrets and message bodies are
 * never passed in; keys are named by number and thumbprint.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino({ level, base: { app: 'batv-proxy' }, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? pino.destination({ sync: false }));
}

/** A logger that drops everything (tests, CLI verbs). */
export const silentLogger: Logger = pino({ level: 'silent' });
