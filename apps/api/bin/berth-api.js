#!/usr/bin/env node
// The berth API server (the same as `berth serve`): configured by BERTH_DATA_DIR, BERTH_CONFIG,
// BERTH_API_LISTEN and BERTH_API_TOKEN.
import '../dist/main.js';
