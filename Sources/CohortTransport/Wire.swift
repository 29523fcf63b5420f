import CohortProtocol
import Foundation
public import GRPCCore

/// Why the server ended a participation: a gRPC status whose message starts with the reason and
/// whose trailing metadata carries it under `cohort-reason`, so any client can tell refusals apart.
public struct ParticipationRefusal: Error, Sendable, CustomStringConvertible {
  public var reason: String
  public var detail: String
  public var code: RPCError.Code

  public init(_ reason: String, _ detail: String, code: RPCError.Code = .invalidArgument) {
    self.reason = reason
    self.detail = detail
    self.code = code
  }

  public static let reasonKey = "cohort-reason"

  public var rpcError: RPCError {
    RPCError(code: code, message: "\(reason): \(detail)", metadata: [Self.reasonKey: "\(reason)"])
  }

  public var description: String { "\(reason): \(detail)" }

  /// The refusal an RPC error carries, if the server sent one.
  public init?(_ error: RPCError) {
    guard let reason = error.metadata[stringValues: Self.reasonKey].first(where: { _ in true }) else {
      return nil
    }
    self.init(reason, error.message, code: error.code)
  }
}

extension Rejection {
  /// The gRPC status code a rejected report ends its stream with.
  var statusCode: RPCError.Code {
    switch self {
    case .late, .duplicate, .notSelected, .unknownRound: .failedPrecondition
    case .protocolVersion: .failedPrecondition
    case .malformed, .tooLarge, .integrity, .outOfRange: .invalidArgument
    case .wrongPopulation, .identity: .permissionDenied
    }
  }
}
