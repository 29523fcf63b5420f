import CohortCore
import CohortProtocol
import Foundation

// The wire form of the protocol's messages, both ways. Reading a wire message never traps: a
// number that does not fit its protocol type is clamped to a value the machines refuse (for
// example a negative size), so range checks stay in one place, the machines.

extension Int {
  /// An Int64 from the wire as an Int (they are the same width on every platform Cohort runs on).
  fileprivate init(wire value: Int64) { self = Int(truncatingIfNeeded: value) }
}

extension DeviceMessage {
  /// The protocol message a wire message carries; nil when it carries none (an empty `oneof`).
  init?(wire message: Cohort_V1_DeviceMessage) {
    switch message.kind {
    case .checkIn(let c):
      self = .checkIn(
        CheckInRequest(
          device: Int(wire: c.device), population: c.population, runtimeVersion: c.runtimeVersion,
          cachedCheckpointSHA256: c.cachedCheckpointSha256, certificate: [UInt8](c.certificate)))
    case .report(let h):
      self = .report(ReportHeader(wire: h))
    case .updateChunk(let c): self = .updateChunk([UInt8](c.data))
    case .secagg(let m): self = .secureAggregation([UInt8](m.message))
    case .abandon(let a): self = .abandon(round: Int(wire: a.round), reason: a.reason)
    case nil: return nil
    }
  }

  var wire: Cohort_V1_DeviceMessage {
    var m = Cohort_V1_DeviceMessage()
    m.protocolVersion = UInt32(protocolVersion)
    switch self {
    case .checkIn(let c):
      m.kind = .checkIn(
        .with {
          $0.device = Int64(c.device)
          $0.population = c.population
          $0.runtimeVersion = c.runtimeVersion
          $0.cachedCheckpointSha256 = c.cachedCheckpointSHA256
          $0.certificate = Data(c.certificate)
        })
    case .report(let h): m.kind = .report(h.wire)
    case .updateChunk(let bytes): m.kind = .updateChunk(.with { $0.data = Data(bytes) })
    case .secureAggregation(let bytes): m.kind = .secagg(.with { $0.message = Data(bytes) })
    case .abandon(let round, let reason):
      m.kind = .abandon(
        .with {
          $0.round = Int64(round)
          $0.reason = reason
        })
    }
    return m
  }
}

extension ReportHeader {
  init(wire h: Cohort_V1_ReportHeader) {
    self.init(
      device: Int(wire: h.device), round: Int(wire: h.round), examples: Int(wire: h.examples),
      trainLoss: h.trainLoss, updateBytes: Int(wire: h.updateBytes),
      controlDeltaBytes: Int(wire: h.controlDeltaBytes), encoding: h.encoding.rawValue,
      sha256: h.updateSha256,
      evaluation: h.evaluated
        ? Evaluation(
          loss: h.evaluationLoss, accuracy: h.evaluationAccuracy, examples: Int(wire: h.evaluationExamples))
        : nil,
      withinClip: h.withinClip, lossAtGlobal: h.reportsLossAtGlobal ? h.lossAtGlobal : nil)
  }

  var wire: Cohort_V1_ReportHeader {
    .with {
      $0.device = Int64(device)
      $0.round = Int64(round)
      $0.examples = Int64(examples)
      $0.trainLoss = trainLoss
      $0.updateBytes = Int64(updateBytes)
      $0.controlDeltaBytes = Int64(controlDeltaBytes)
      $0.encoding = Cohort_V1_UpdateEncoding(rawValue: encoding) ?? .UNRECOGNIZED(encoding)
      $0.updateSha256 = sha256
      if let e = evaluation {
        $0.evaluated = true
        $0.evaluationLoss = e.loss
        $0.evaluationAccuracy = e.accuracy
        $0.evaluationExamples = Int64(e.examples)
      }
      $0.withinClip = withinClip
      if let l = lossAtGlobal {
        $0.reportsLossAtGlobal = true
        $0.lossAtGlobal = l
      }
    }
  }
}

extension ServerMessage {
  init?(wire message: Cohort_V1_ServerMessage) {
    switch message.kind {
    case .retry(let r): self = .retry(earliestSeconds: r.earliestSeconds, latestSeconds: r.latestSeconds)
    case .admitted(let a): self = .admitted(round: Int(wire: a.round))
    case .task(let t):
      self = .task(
        TaskDescription(
          round: Int(wire: t.round), checkpointSHA256: t.checkpointSha256,
          checkpointBytes: Int(wire: t.checkpointBytes), checkpointFollows: t.checkpointFollows,
          reportingDeadlineSeconds: t.reportingDeadlineSeconds, evaluate: t.evaluate, clipNorm: t.clipNorm,
          planJSON: t.planJson, maxUpdateBytes: Int(wire: t.maxUpdateBytes),
          maxChunkBytes: Int(wire: t.maxChunkBytes), codecSeed: t.codecSeed,
          serverControlBytes: Int(wire: t.serverControlBytes)))
    case .checkpointChunk(let c): self = .checkpointChunk([UInt8](c.data))
    case .serverControlChunk(let c): self = .serverControlChunk([UInt8](c.data))
    case .secaggBegin(let b):
      self = .secureAggregationBegin(
        SecureAggregationBegin(
          round: Int(wire: b.round), index: Int(b.index), count: Int(b.count), degree: Int(b.degree),
          threshold: Int(b.threshold), graphSeed: [UInt8](b.graphSeed), vectorLength: Int(b.vectorLength),
          ringBits: Int(b.ringBits), sharedSeed: b.sharedSeed,
          peers: b.peers.map { .init(index: Int($0.index), certificate: [UInt8]($0.certificate)) }))
    case .secagg(let m): self = .secureAggregation([UInt8](m.message))
    case .acknowledgement(let a):
      self = .acknowledgement(round: Int(wire: a.round), accepted: a.accepted, reason: a.reason)
    case nil: return nil
    }
  }

  var wire: Cohort_V1_ServerMessage {
    var m = Cohort_V1_ServerMessage()
    m.protocolVersion = UInt32(protocolVersion)
    switch self {
    case .retry(let earliest, let latest):
      m.kind = .retry(
        .with {
          $0.earliestSeconds = earliest
          $0.latestSeconds = latest
        })
    case .admitted(let round): m.kind = .admitted(.with { $0.round = Int64(round) })
    case .task(let t):
      m.kind = .task(
        .with {
          $0.round = Int64(t.round)
          $0.checkpointSha256 = t.checkpointSHA256
          $0.checkpointBytes = Int64(t.checkpointBytes)
          $0.checkpointFollows = t.checkpointFollows
          $0.reportingDeadlineSeconds = t.reportingDeadlineSeconds
          $0.evaluate = t.evaluate
          $0.clipNorm = t.clipNorm
          $0.planJson = t.planJSON
          $0.maxUpdateBytes = Int64(t.maxUpdateBytes)
          $0.maxChunkBytes = Int64(t.maxChunkBytes)
          $0.codecSeed = t.codecSeed
          $0.serverControlBytes = Int64(t.serverControlBytes)
        })
    case .checkpointChunk(let bytes): m.kind = .checkpointChunk(.with { $0.data = Data(bytes) })
    case .serverControlChunk(let bytes): m.kind = .serverControlChunk(.with { $0.data = Data(bytes) })
    case .secureAggregationBegin(let b):
      m.kind = .secaggBegin(
        .with {
          $0.round = Int64(b.round)
          $0.index = UInt32(clamping: b.index)
          $0.count = UInt32(clamping: b.count)
          $0.degree = UInt32(clamping: b.degree)
          $0.threshold = UInt32(clamping: b.threshold)
          $0.graphSeed = Data(b.graphSeed)
          $0.vectorLength = UInt32(clamping: b.vectorLength)
          $0.ringBits = UInt32(clamping: b.ringBits)
          $0.sharedSeed = b.sharedSeed
          $0.peers = b.peers.map { peer in
            .with {
              $0.index = UInt32(clamping: peer.index)
              $0.certificate = Data(peer.certificate)
            }
          }
        })
    case .secureAggregation(let bytes): m.kind = .secagg(.with { $0.message = Data(bytes) })
    case .acknowledgement(let round, let accepted, let reason):
      m.kind = .acknowledgement(
        .with {
          $0.round = Int64(round)
          $0.accepted = accepted
          $0.reason = reason
        })
    }
    return m
  }
}
