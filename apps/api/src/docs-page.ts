import type { OpenApiDocument } from './openapi.js';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

function escape(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c] ?? c);
}

/**
 * A self-contained HTML page describing every route of `doc` (no script, no outside assets: the
 * API may run where nothing else can be fetched).
 */
export function renderDocsPage(doc: OpenApiDocument): string {
  const sections: string[] = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const summary = typeof op.summary === 'string' ? op.summary : '';
      const description = typeof op.description === 'string' ? `<p>${escape(op.description)}</p>` : '';
      const secured = Array.isArray(op.security) && op.security.length > 0 ? 'bearer token' : 'public';
      const params = Array.isArray(op.parameters)
        ? `<h4>Parameters</h4><pre>${escape(JSON.stringify(op.parameters, null, 2))}</pre>`
        : '';
      const body = op.requestBody === undefined ? '' : `<h4>Body</h4><pre>${escape(JSON.stringify(op.requestBody, null, 2))}</pre>`;
      const responses = op.responses as Record<string, { description?: string }> | undefined;
      const statuses = Object.entries(responses ?? {})
        .map(([status, r]) => `<li><code>${escape(status)}</code> ${escape(r.description ?? '')}</li>`)
        .join('');
      sections.push(
        `<section><h3><code>${escape(method.toUpperCase())} ${escape(path)}</code> — ${escape(summary)} <small>(${secured})</small></h3>${description}${params}${body}<h4>Responses</h4><ul>${statuses}</ul></section>`,
      );
    }
  }
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(doc.info.title)}</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}pre{background:#f4f4f4;padding:.5rem;overflow:auto;max-height:20rem}section{border-top:1px solid #ddd}</style>
</head><body><h1>${escape(doc.info.title)} ${escape(doc.info.version)}</h1><p>${escape(doc.info.description)}</p>
<p>The machine-readable document: <a href="/openapi.json">/openapi.json</a>.</p>
${sections.join('\n')}
</body></html>
`;
}
