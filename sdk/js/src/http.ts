import { DongdongError } from './errors.js';

/** An uploaded file, as the server describes it (docs/protocol.md, "Files and images"). */
export interface FileInfo {
  fileId: string;
  name: string;
  size: number;
  contentType: string;
  sha256: string;
  width: number;
  height: number;
  thumbnailId: string | null;
  /** Signed download links (valid until `expiresMs`). */
  url: string;
  thumbnailUrl: string | null;
  expiresMs: number;
}

export interface UploadOptions {
  name?: string;
  /** The file's type (the server sniffs the bytes and refuses a mismatch). */
  contentType?: string;
  /** Called with the bytes sent so far and the total (browsers report as it goes). */
  onProgress?: (sent: number, total: number) => void;
}

interface Described {
  file_id: string;
  name: string;
  size: number;
  content_type: string;
  sha256: string;
  width: number;
  height: number;
  thumbnail_id: string | null;
  url: string;
  thumbnail_url: string | null;
  expires_ms: number;
}

/** A link is renewed this long before it expires. */
const RENEW_BEFORE_MS = 60_000;
/** Most links remembered. */
const MAX_LINKS = 1000;

/** The HTTP API under `/api/v1` with the client's token. */
export class HttpApi {
  private readonly links = new Map<string, { url: string; thumbnailUrl: string | null; expiresMs: number }>();

  constructor(
    readonly base: string,
    private readonly token: string | (() => string | Promise<string>),
  ) {}

  private async bearer(): Promise<string> {
    return `Bearer ${typeof this.token === 'function' ? await this.token() : this.token}`;
  }

  /** A JSON request; an `{"error": …}` answer throws a DongdongError. */
  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { authorization: await this.bearer() };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let r: Response;
    try {
      r = await fetch(this.base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new DongdongError('UNAVAILABLE', 'the server cannot be reached', true);
    }
    return answer<T>(r.status, await r.text());
  }

  /** Uploads the bytes; resolves with what the server made of them. */
  async upload(data: Blob | ArrayBuffer | Uint8Array, options: UploadOptions = {}): Promise<FileInfo> {
    const path = `${this.base}/api/v1/files${options.name ? `?name=${encodeURIComponent(options.name)}` : ''}`;
    const type = options.contentType ?? ((data as Blob).type || 'application/octet-stream');
    const total = (data as Blob).size ?? (data as ArrayBuffer).byteLength;
    const auth = await this.bearer();
    let status: number;
    let text: string;
    if (typeof XMLHttpRequest !== 'undefined') {
      ({ status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open('POST', path);
        xhr.setRequestHeader('authorization', auth);
        xhr.setRequestHeader('content-type', type);
        xhr.upload.onprogress = (e) => options.onProgress?.(e.loaded, e.total || total);
        xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
        xhr.onerror = () => reject(new DongdongError('UNAVAILABLE', 'the upload was cut off', true));
        xhr.send(data as XMLHttpRequestBodyInit);
      }));
    } else {
      options.onProgress?.(0, total);
      let r: Response;
      try {
        r = await fetch(path, { method: 'POST', headers: { authorization: auth, 'content-type': type }, body: data as BodyInit });
      } catch {
        throw new DongdongError('UNAVAILABLE', 'the upload was cut off', true);
      }
      status = r.status;
      text = await r.text();
    }
    const d = answer<Described>(status, text);
    options.onProgress?.(total, total);
    this.remember(d.file_id, d);
    return {
      fileId: d.file_id,
      name: d.name,
      size: d.size,
      contentType: d.content_type,
      sha256: d.sha256,
      width: d.width,
      height: d.height,
      thumbnailId: d.thumbnail_id,
      url: this.base + d.url,
      thumbnailUrl: d.thumbnail_url ? this.base + d.thumbnail_url : null,
      expiresMs: d.expires_ms,
    };
  }

  /** A signed link of a file or its thumbnail, renewed before it expires. */
  async link(fileId: string, thumbnail = false): Promise<string> {
    let l = this.links.get(fileId);
    if (!l || l.expiresMs - RENEW_BEFORE_MS < Date.now()) {
      const d = await this.call<Described>('POST', `/api/v1/files/${encodeURIComponent(fileId)}/link`);
      this.remember(fileId, d);
      l = this.links.get(fileId);
    }
    const url = thumbnail ? (l?.thumbnailUrl ?? l?.url) : l?.url;
    return this.base + (url ?? '');
  }

  private remember(fileId: string, d: Described): void {
    if (this.links.size >= MAX_LINKS) this.links.delete(this.links.keys().next().value as string);
    this.links.set(fileId, { url: d.url, thumbnailUrl: d.thumbnail_url, expiresMs: d.expires_ms });
  }
}

function answer<T>(status: number, text: string): T {
  let data: { error?: { code?: string; message?: string } } | null = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (status >= 200 && status < 300) return data as T;
  const e = data?.error ?? {};
  throw new DongdongError((e.code as DongdongError['code']) ?? 'INTERNAL', e.message ?? `HTTP ${status}`, status >= 500 || status === 429);
}
