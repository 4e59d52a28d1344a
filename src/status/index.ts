/** The status page's parts, for the composition root (src/proxy.ts) and the metrics listener. */
export { StatusBook, type Counts, type RecentEvent, type SampledCounters } from './book.js';
export { loadAccess, type Access } from './access.js';
export { statusReport, type ListenerInfo, type StatusSource } from './report.js';
