/**
 * Run one attach or detach through the HTTP API as a client does — `POST` it, then long-poll its
 * outcome — and throw unless it succeeded.
 */
export async function operateOverHttp(url: string, token: string, volume: string, action: 'attach' | 'detach', body: object): Promise<void> {
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  const started = await fetch(`${url}/v1/volumes/${volume}/${action}`, { method: 'POST', headers, body: JSON.stringify(body) });
  if (started.status !== 202) throw new Error(`${action} ${volume}: ${started.status} ${await started.text()}`);
  const { id } = (await started.json()) as { id: string };
  for (;;) {
    const answer = await fetch(`${url}/v1/operations/${id}/outcome?wait=30s`, { headers });
    const text = await answer.text();
    if (answer.status === 200) {
      const state = (JSON.parse(text) as { operation?: { state?: string } }).operation?.state;
      if (state !== 'succeeded') throw new Error(`${action} ${volume}: operation ${id} ended ${String(state)}: ${text}`);
      return;
    }
    if (answer.status !== 202) throw new Error(`${action} ${volume}: operation ${id} answered ${answer.status} ${text}`);
  }
}

/** An admin `POST` to the API that must answer `status` (201 by default). */
export async function postOrThrow(url: string, token: string, pathname: string, body: object, status = 201): Promise<void> {
  const answer = await fetch(`${url}${pathname}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (answer.status !== status) throw new Error(`POST ${pathname}: ${answer.status} ${await answer.text()}`);
}
