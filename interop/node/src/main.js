'use strict';
// exchange_connector in Node.js: `node src/main.js serve --listen H:P --upstream H:P
// [--metrics-listen H:P] [--tls-cert F --tls-key F] [--token T | --token-file F]`, and
// `node src/main.js health --address H:P [--tls-ca F]` (exit 0 only when SERVING).

const { parse, UsageError } = require('./args');

function main(argv) {
  let options;
  try {
    options = parse(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`exchange_connector: ${error.message}\n`);
    process.exit(2);
  }
  if (options.command === 'health') require('./probe').probe(options);
  else require('./server').serve(options);
}

main(process.argv.slice(2));
