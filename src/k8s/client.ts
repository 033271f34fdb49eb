/** The HTTP status of a failed client-node call, if it has one. */
export function statusCode(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown; response?: { statusCode?: unknown } };
  for (const c of [e?.code, e?.statusCode, e?.response?.statusCode]) if (typeof c === "number") return c;
  return undefined;
}

/** The apiserver's message for a failed call (the Status body), or the error text. */
export function errorMessage(err: unknown): string {
  const body = (err as { body?: unknown })?.body;
  if (typeof body === "string") {
    try {
      const status = JSON.parse(body) as { message?: string };
      if (status.message) return status.message;
    } catch {
      return body;
    }
  } else if (body && typeof body === "object" && "message" in body) {
    return String((body as { message: unknown }).message);
  }
  return err instanceof Error ? err.message : String(err);
}
