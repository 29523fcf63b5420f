public import CohortSecAgg

// What the device's runtime needs from the world outside the protocol, as protocols the
// transport implements: a participation stream to the server, and the checks of peers'
// certificates for the active secure-aggregation variant (X.509 lives in the transport).

/// How a device reaches the server: one bidirectional stream per participation.
public protocol ParticipationChannel: Sendable {
  /// Opens a participation stream and runs `body` with it; the stream closes when `body`
  /// returns, and is cancelled when it throws.
  ///
  /// Throws ``ParticipationChannelError`` when the stream cannot be opened or fails outside
  /// `body`; errors thrown by `body` pass through unchanged.
  func participate<Result: Sendable>(
    _ body: @escaping @Sendable (ParticipationStream) async throws -> Result
  ) async throws -> Result
}

/// One open participation stream.
public struct ParticipationStream: Sendable {
  private let sendMessage: @Sendable (DeviceMessage) -> Void
  private let nextMessage: @Sendable () async throws -> ServerMessage?

  /// - Parameters:
  ///   - next: the server's next message; nil when the server ended the stream. It throws
  ///     ``ParticipationChannelError``. Only one task calls it, one call at a time.
  public init(
    send: @escaping @Sendable (DeviceMessage) -> Void,
    next: @escaping @Sendable () async throws -> ServerMessage?
  ) {
    sendMessage = send
    nextMessage = next
  }

  /// Queues a message to the server (in order).
  public func send(_ message: DeviceMessage) { sendMessage(message) }

  /// The server's next message, nil at the end of the stream.
  public func next() async throws -> ServerMessage? { try await nextMessage() }
}

/// Why a participation stream failed.
public enum ParticipationChannelError: Error, Sendable, Hashable, CustomStringConvertible {
  /// The server refused the participation, with its reason (`too_large`, `late`, …) and detail.
  case refused(reason: String, detail: String)
  /// The server sent something the device cannot read (another protocol version, a message with
  /// no content): the device refuses the participation.
  case unreadable(reason: String, detail: String)
  /// The connection failed (unreachable, reset, TLS).
  case connection(String)

  public var description: String {
    switch self {
    case .refused(let reason, let detail): "refused: \(reason): \(detail)"
    case .unreadable(let reason, let detail): "unreadable: \(reason): \(detail)"
    case .connection(let detail): "connection: \(detail)"
    }
  }
}

/// A device's long-term identity for the active secure-aggregation variant: its certificate, its
/// signing key, and the checks of its round's peers' certificates against its own CA.
public protocol SecureAggregationIdentity: Sendable {
  /// The device's certificate (DER), sent at check-in.
  var certificateDER: [UInt8] { get }
  /// A copy of the 64-byte Ed25519 secret key for one protocol run; the caller zeroes it.
  func secretKey() -> [UInt8]
  /// The signing keys of a round's members by index, from the certificates the server relayed,
  /// each checked by the device itself; any failure refuses the round.
  func identityKeys(peers: [SecureAggregationBegin.Peer], count: Int, ownIndex: Int) async -> Result<
    [SecAggIndex: [UInt8]], DeviceCertificateRefusal
  >
}

/// Why a device certificate was refused, by the server at check-in or by a device among its
/// round's peers. The reason is what the refusal is counted and reported under.
public struct DeviceCertificateRefusal: Error, Sendable, Hashable, CustomStringConvertible {
  public enum Reason: String, Sendable, CaseIterable {
    /// The plan's active variant needs a certificate and none came.
    case missing = "certificate_missing"
    /// Not a DER X.509 certificate.
    case unreadable = "certificate_unreadable"
    /// It does not chain to the trusted CA (another CA, a tampered body, expired, not for clients).
    case untrusted = "certificate_untrusted"
    /// It has no signing-key extension, or one that is not an Ed25519 key.
    case noSigningKey = "certificate_no_signing_key"
    /// It names another device than the one presenting it (or than the one it stands for).
    case wrongDevice = "certificate_wrong_device"
  }

  public var reason: Reason
  public var detail: String
  public var description: String { "\(reason.rawValue): \(detail)" }

  public init(_ reason: Reason, _ detail: String) {
    self.reason = reason
    self.detail = detail
  }
}
