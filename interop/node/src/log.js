'use strict';
// JSON log lines on stderr, one object per line: ts, level, logger, event and the event's fields.

const LEVELS = { debug: 10, info: 20, warning: 30, error: 40 };
let threshold = LEVELS[(process.env.LOG_LEVEL || 'info').toLowerCase()] || LEVELS.info;

function setLevel(name) {
  threshold = LEVELS[String(name).toLowerCase()] || threshold;
}

function log(level, event, fields = {}) {
  if (LEVELS[level] < threshold) return;
  const line = { ts: new Date().toISOString(), level, logger: 'exchange_connector', event, ...fields };
  process.stderr.write(JSON.stringify(line) + '\n');
}

// One line per `intervalMs` at most; each line carries the count of occurrences it stands for.
function rateLimited(level, event, intervalMs) {
  let last = 0;
  let pending = 0;
  let total = 0;
  return (fields = {}) => {
    pending += 1;
    total += 1;
    const now = Date.now();
    if (now - last < intervalMs) return;
    last = now;
    log(level, event, { ...fields, count: pending, total });
    pending = 0;
  };
}

module.exports = {
  setLevel,
  rateLimited,
  debug: (event, fields) => log('debug', event, fields),
  info: (event, fields) => log('info', event, fields),
  warning: (event, fields) => log('warning', event, fields),
  error: (event, fields) => log('error', event, fields),
};
