// Types of herald.js, Herald's browser client (served at /herald.js). See docs/protocol.md.

export interface HeraldEvent<T = unknown> {
  id: string;
  seq: number;
  type: string;
  data: T;
  userId?: string;
  roomId?: string;
  timestamp: string;
  metadata?: Record<string, unknown>;
}

export interface Filters {
  userId?: string;
  roomId?: string;
  /** Each field must equal the same top-level field of the event's `data`. */
  custom?: Record<string, unknown>;
}

/** A server message: `{type, data?, id?, ...flat fields}`. */
export interface ServerMessage {
  type: string;
  data?: any;
  id?: unknown;
  [field: string]: unknown;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  attempt?: number;
  /** Milliseconds until the next attempt (state "reconnecting"). */
  delay?: number;
  reason?: { code?: number; reason?: string };
  transport?: "websocket" | "sse";
  connectionId?: string | null;
}

export interface Published {
  success: true;
  id: string;
  seq: number;
  type: string;
  timestamp: string;
}

export interface Presence {
  room: string;
  count: number;
  users: { userId?: string; name: string; connections: number }[];
}

export interface HeraldOptions {
  /** The server's base URL; default: the page's origin. */
  url?: string;
  /** A JWT or API key, or a function returning one (called on every (re)connect). */
  token?: string | (() => string | Promise<string>);
  /** Default "auto": WebSocket, Server-Sent Events when WebSocket keeps failing. */
  transport?: "auto" | "websocket" | "sse";
  /** Resume subscriptions from this seq (e.g. one saved before a page reload). */
  since?: number;
  /** A WebSocket implementation (e.g. the `ws` package under Node). */
  WebSocket?: any;
  EventSource?: any;
  /** Reconnect backoff: first delay (default 1000 ms) and cap (default 30000 ms). */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Connect in the constructor (default true). */
  autoConnect?: boolean;
}

export interface Subscription {
  unsubscribe(): void;
}

export declare function matchesPattern(pattern: string, type: string): boolean;
export declare function matchesSubscription(
  sub: { eventTypes: string[]; filters?: Filters },
  event: HeraldEvent,
): boolean;
/** Delay before reconnect attempt `attempt` (1-based): min(cap, base·2^(attempt-1)), jittered to 50–100 %. */
export declare function backoffDelay(attempt: number, base?: number, cap?: number): number;

export declare class Herald {
  constructor(options?: HeraldOptions);
  readonly state: ConnectionState;
  /** The highest seq received so far. */
  readonly seq: number | null;
  readonly connectionId: string | null;
  readonly userId: string | null;

  connect(): void;
  close(): void;

  on(type: "state", fn: (change: StateChange) => void): () => void;
  on(type: "event", fn: (message: { type: "event"; data: HeraldEvent }) => void): () => void;
  on(type: string, fn: (message: ServerMessage) => void): () => void;

  /** Sends now, or queues until connected. */
  send(message: Record<string, unknown>): void;
  /** Sends with an `id`; resolves with the reply echoing it, rejects on `error`. */
  request(message: Record<string, unknown>): Promise<ServerMessage>;

  authenticate(token: string): Promise<string>;
  subscribe(eventTypes: string | string[], handler: (event: HeraldEvent) => void): Subscription;
  subscribe(
    eventTypes: string | string[],
    filters?: Filters,
    handler?: (event: HeraldEvent) => void,
  ): Subscription;
  publish(
    type: string,
    data?: unknown,
    options?: { roomId?: string; userId?: string; metadata?: Record<string, unknown> },
  ): Promise<Published>;
  join(room: string, user?: string | { name: string; avatar?: string }): Promise<ServerMessage>;
  leave(room: string): Promise<ServerMessage>;
  chat(room: string, text: string): Promise<Published>;
  typing(room: string, isTyping?: boolean): void;
  privateMessage(target: string, text: string): Promise<Published>;
  presence(room: string): Promise<Presence>;
  streamSubscribe(stream: string, handler: (data: any, message: ServerMessage) => void): Subscription;
  /** Joins a collaborative document (rejoined after each reconnect). WebSocket only. */
  document(id: string): HeraldDocument;
}

/** A text change: delete `length` UTF-16 code units at `position`, insert `text`. */
export interface TextChange {
  position: number;
  length: number;
  text: string;
}

/** `x` rewritten to apply after `y` (both made on the same text); the server's transformation. */
export function transformChange(x: TextChange, y: TextChange, xFirst: boolean): TextChange;
export function applyChange(text: string, change: TextChange): string;

export interface Participant {
  user: string;
  cursor: unknown;
}

/**
 * A collaborative document: local edits apply at once and converge with everyone's. After a
 * reconnect, or a change refused as too old, it catches up from its last confirmed version and
 * keeps its local edits (each change carries a `changeId`, so one committed before its
 * acknowledgement was lost is recognised, not applied twice). When the server no longer keeps
 * the changes since that version, or a change is refused for what it is, it takes a fresh
 * snapshot: the edits not yet acknowledged are dropped and `resync` says which.
 */
export class HeraldDocument {
  readonly id: string;
  /** The text as this participant sees it. */
  readonly text: string;
  /** The server's version this text is based on. */
  readonly version: number;
  readonly participants: Participant[];
  readonly cursors: Map<string, unknown>;
  /** Resolves once the first snapshot arrived. */
  readonly ready: Promise<HeraldDocument>;
  on(type: "change", fn: (c: { text: string; change?: TextChange; remote: boolean; author?: string }) => void): () => void;
  on(type: "participants", fn: (participants: Participant[]) => void): () => void;
  on(type: "cursor", fn: (c: { user: string; cursor: unknown }) => void): () => void;
  on(type: "error", fn: (e: { error: string; code: string }) => void): () => void;
  on(type: "resync", fn: (r: { documentId: string; version: number; dropped: TextChange[] }) => void): () => void;
  edit(position: number, length: number, text?: string): void;
  moveCursor(cursor: unknown): void;
  leave(): void;
}
