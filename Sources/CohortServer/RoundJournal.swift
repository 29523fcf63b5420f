public import CohortCore
public import CohortStore
public import Foundation

/// Where the Coordinator writes each closed round: the results store, or in tests a store that
/// fails on purpose. A write is one transaction: the round, its checkpoint and its devices land
/// together or not at all.
public protocol RoundJournal: Sendable {
  func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord]
  ) async throws(CohortError)
}

extension ResultsStore: RoundJournal {}

/// Commits rounds to a store that several servers may share (PostgreSQL), each commit carrying
/// the fencing token of the leader lease this server took: if another server has taken the lease
/// since, the commit is refused (`fenced`) in its own transaction and nothing is written.
public struct LeasedJournal: RoundJournal {
  public let store: any FederationStore
  public let lease: LeaseGrant

  public init(store: any FederationStore, lease: LeaseGrant) {
    self.store = store
    self.lease = lease
  }

  public func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord]
  ) async throws(CohortError) {
    try await store.commitRound(
      run, record, checkpoint: checkpoint, devices: devices, lateReports: lateReports,
      resumeState: resumeState,
      secureAggregation: secureAggregation, fencingToken: lease.token)
  }
}
