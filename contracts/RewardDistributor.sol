// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title RewardDistributor
/// @notice Holds the reward pool and credits workers in batches sent by the orchestrator; workers
///         pull what they were credited with `claim`.
/// @dev Every worker has ever-growing `credited` and `claimed` counters, so a repeat credit is one
///      warm storage write. A batch carries a nonce that must equal `batchNonce`, which makes a
///      batch impossible to apply twice even when two senders race. The pool is this contract's
///      token balance: stake lives in the WorkerRegistry and is never reachable from here.
contract RewardDistributor is AccessControl {
    using SafeERC20 for IERC20;

    /// @notice The reward token (KREW).
    IERC20 public immutable token;
    /// @notice The only account that may call `batchDistributeRewards`.
    address public orchestrator;
    /// @notice The nonce the next batch must carry.
    uint256 public batchNonce;
    /// @notice Most recipients in one batch.
    uint256 public maxBatch;
    /// @notice All credits ever made, in wei.
    uint256 public totalCredited;
    /// @notice All claims ever paid, in wei.
    uint256 public totalClaimed;
    /// @notice Wei ever credited to each worker.
    mapping(address worker => uint256) public credited;
    /// @notice Wei ever claimed by each worker.
    mapping(address worker => uint256) public claimed;

    /// @notice Batch `nonce` credited `count` workers with `total` wei; `payloadHash` is
    ///         keccak256(abi.encode(workers, amounts)).
    event RewardsDistributed(uint256 indexed nonce, bytes32 payloadHash, uint256 total, uint256 count);
    /// @notice `worker` claimed `amount` wei.
    event Claimed(address indexed worker, uint256 amount);
    /// @notice The pool received `amount` wei from `from`.
    event PoolFunded(address indexed from, uint256 amount);
    /// @notice The orchestrator address changed.
    event OrchestratorSet(address orchestrator);
    /// @notice The largest batch size changed.
    event MaxBatchSet(uint256 maxBatch);

    /// @notice The caller is not the orchestrator.
    error NotOrchestrator(address caller);
    /// @notice The batch carries `given` but the next nonce is `expected`.
    error WrongNonce(uint256 expected, uint256 given);
    /// @notice `workers` and `amounts` differ in length.
    error LengthMismatch(uint256 workers, uint256 amounts);
    /// @notice The batch is empty or larger than `maxBatch`.
    error BadBatchSize(uint256 size, uint256 maxBatch);
    /// @notice A recipient is the zero address.
    error ZeroAddress();
    /// @notice The batch pays `total` but only `available` of the pool is unallocated.
    error PoolExhausted(uint256 total, uint256 available);
    /// @notice The caller has nothing to claim.
    error NothingToClaim(address worker);
    /// @notice A zero amount or a zero batch size was given.
    error ZeroAmount();

    /// @param admin The account that sets the orchestrator and funds the pool.
    /// @param rewardToken The reward token.
    /// @param orchestrator_ The account that sends batches.
    /// @param maxBatch_ Most recipients in one batch.
    constructor(address admin, IERC20 rewardToken, address orchestrator_, uint256 maxBatch_) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        token = rewardToken;
        _setOrchestrator(orchestrator_);
        _setMaxBatch(maxBatch_);
    }

    /// @notice Credit each worker its amount; only the orchestrator, only with the next nonce.
    /// @param nonce Must equal `batchNonce`; it is incremented.
    /// @param workers The recipients (no zero address).
    /// @param amounts Wei for each recipient, in the same order.
    function batchDistributeRewards(uint256 nonce, address[] calldata workers, uint256[] calldata amounts) external {
        if (msg.sender != orchestrator) revert NotOrchestrator(msg.sender);
        if (nonce != batchNonce) revert WrongNonce(batchNonce, nonce);
        uint256 count = workers.length;
        if (count != amounts.length) revert LengthMismatch(count, amounts.length);
        if (count == 0 || count > maxBatch) revert BadBatchSize(count, maxBatch);
        uint256 total = 0;
        for (uint256 i = 0; i < count; ++i) {
            address worker = workers[i];
            if (worker == address(0)) revert ZeroAddress();
            uint256 amount = amounts[i];
            credited[worker] += amount;
            total += amount;
        }
        uint256 available = unallocated();
        if (total > available) revert PoolExhausted(total, available);
        totalCredited += total;
        batchNonce = nonce + 1;
        emit RewardsDistributed(nonce, keccak256(abi.encode(workers, amounts)), total, count);
    }

    /// @notice Pay the caller everything credited to it and not yet claimed.
    function claim() external {
        uint256 amount = credited[msg.sender] - claimed[msg.sender];
        if (amount == 0) revert NothingToClaim(msg.sender);
        claimed[msg.sender] += amount;
        totalClaimed += amount;
        emit Claimed(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Move `amount` wei of KREW from the caller into the pool (approve first).
    /// @param amount The amount in wei.
    function fund(uint256 amount) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (amount == 0) revert ZeroAmount();
        emit PoolFunded(msg.sender, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Set the account that sends batches.
    /// @param orchestrator_ The new orchestrator (not zero).
    function setOrchestrator(address orchestrator_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setOrchestrator(orchestrator_);
    }

    /// @notice Set the most recipients in one batch.
    /// @param maxBatch_ The new limit (at least 1).
    function setMaxBatch(uint256 maxBatch_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setMaxBatch(maxBatch_);
    }

    /// @notice Wei that `worker` can claim now.
    /// @param worker The worker's address.
    /// @return The claimable amount.
    function claimable(address worker) external view returns (uint256) {
        return credited[worker] - claimed[worker];
    }

    /// @notice Wei in the pool not yet credited to anyone.
    /// @return The unallocated amount.
    function unallocated() public view returns (uint256) {
        return token.balanceOf(address(this)) - (totalCredited - totalClaimed);
    }

    function _setOrchestrator(address orchestrator_) private {
        if (orchestrator_ == address(0)) revert ZeroAddress();
        orchestrator = orchestrator_;
        emit OrchestratorSet(orchestrator_);
    }

    function _setMaxBatch(uint256 maxBatch_) private {
        if (maxBatch_ == 0) revert ZeroAmount();
        maxBatch = maxBatch_;
        emit MaxBatchSet(maxBatch_);
    }
}
