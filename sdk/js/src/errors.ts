import type { ErrorCode } from './protocol.js';

/**
 * The codes a failure can have: the server's `ErrorCode`s, and the
 * client's own: DISCONNECTED (the connection was lost before an answer;
 * a send is retried), TIMEOUT (no answer in time), CLOSED (the client was
 * closed, or the server closed the connection for good), EXPIRED (a send
 * that could not be made before its deadline).
 */
export type ErrorKind = ErrorCode | 'DISCONNECTED' | 'TIMEOUT' | 'CLOSED' | 'EXPIRED';

/** A failure: the server's `Error` frame, or one of the client's own. */
export class DongdongError extends Error {
  readonly code: ErrorKind;
  /** Whether trying the same request again later may succeed. */
  readonly retryable: boolean;

  constructor(code: ErrorKind, message: string, retryable: boolean) {
    super(message || code);
    this.name = 'DongdongError';
    this.code = code;
    this.retryable = retryable;
  }

  /** From the server's `Error` frame. */
  static fromFrame(e: { code?: ErrorCode; message?: string; retryable?: boolean }): DongdongError {
    return new DongdongError(e.code ?? 'ERROR_CODE_UNSPECIFIED', e.message ?? '', !!e.retryable);
  }
}
