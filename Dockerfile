# batv-proxy: small, non-root image. Build: docker build -t batv-proxy .
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY bin ./bin
# npm ci runs the prepare script, which compiles src/ into dist/.
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
# Inside the container the listeners take all interfaces (publish them with -p 127.0.0.1:...); relaying is
# still allowed only from outbound.allowNetworks (loopback by default). /healthz answers on 9425 for the
# HEALTHCHECK below with a plain `docker run`.
ENV NODE_ENV=production \
    BATV_PROXY_OUTBOUND__LISTEN=0.0.0.0:2525 \
    BATV_PROXY_INBOUND__LISTEN=0.0.0.0:2526 \
    BATV_PROXY_METRICS__LISTEN=0.0.0.0:9425 \
    BATV_PROXY_KEYS__DIR=/var/lib/batv-proxy/keys \
    BATV_PROXY_OUTBOUND__CAPTURE_DIR=/var/lib/batv-proxy/mail/outbox \
    BATV_PROXY_INBOUND__CAPTURE_DIR=/var/lib/batv-proxy/mail/inbox
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
RUN mkdir -p /var/lib/batv-proxy && chown node:node /var/lib/batv-proxy
USER node
VOLUME /var/lib/batv-proxy
EXPOSE 2525 2526 9425
HEALTHCHECK --interval=10s --timeout=3s CMD node -e "fetch('http://127.0.0.1:9425/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "bin/batv-proxy.js"]
CMD ["serve"]
