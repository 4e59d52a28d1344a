/**
 * The layering rules (STYLE.md §3.1): src/tags and src/policy are pure (no I/O modules, no libraries but
 * node:crypto's HMAC, no clock reads); src/smtp imports no policy; Date.now appears only in src/clock.ts and the CLI entry;
 * only src/main.ts touches process.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.join(import.meta.dirname, '..', 'src');
function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}
const imports = (file: string) => [...readFileSync(file, 'utf8').matchAll(/^\s*import[^'"]*['"]([^'"]+)['"]/gm)].map((m) => m[1]!);

describe('module boundaries', () => {
  it('src/tags and src/policy import only each other, src/clock, src/reply, node:crypto (HMAC) and type-only config', () => {
    for (const f of [...files(path.join(root, 'tags')), ...files(path.join(root, 'policy'))]) {
      for (const spec of imports(f)) {
        const ok = spec === 'node:crypto' || spec.startsWith('./') || spec.startsWith('../tags/') || spec.startsWith('../policy/') || spec === '../clock.js' || spec === '../reply.js' || (spec === '../config.js' && /import type[^;]*'\.\.\/config\.js'/.test(readFileSync(f, 'utf8')));
        expect(ok, `${path.relative(root, f)} imports ${spec}`).toBe(true);
      }
    }
  });

  it('no module reads the clock except src/clock.ts and the CLI entry points', () => {
    const allowed = new Set(['clock.ts', 'main.ts']);
    for (const f of files(root)) {
      if (allowed.has(path.relative(root, f))) continue;
      expect(/Date\.now\(\)/.test(readFileSync(f, 'utf8')), `${path.relative(root, f)} calls Date.now()`).toBe(false);
    }
  });

  it('only src/main.ts touches process (argv, env, stdio, signals); everything else gets them passed in', () => {
    for (const f of files(root)) {
      if (path.relative(root, f) === 'main.ts') continue;
      const code = readFileSync(f, 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, ''); // comments may name it
      expect(/\bprocess\s*[.[]/.test(code), `${path.relative(root, f)} touches process`).toBe(false);
    }
  });

  it('src/smtp imports no policy', () => {
    for (const f of files(path.join(root, 'smtp'))) for (const spec of imports(f)) expect(spec.includes('policy/'), `${f} imports ${spec}`).toBe(false);
  });
});
