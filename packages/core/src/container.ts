import 'reflect-metadata';
import { container as rootContainer, type DependencyContainer, type InjectionToken } from 'tsyringe';

/** DI tokens: `Symbol.for('berth.<Name>')`, so two copies of core agree on them. */
export const TOKENS = {
  Config: Symbol.for('berth.Config'),
  Store: Symbol.for('berth.Store'),
  Host: Symbol.for('berth.HostServices'),
  HostIdentity: Symbol.for('berth.HostIdentity'),
  Logger: Symbol.for('berth.Logger'),
  Catalog: Symbol.for('berth.DriverCatalog'),
  Service: Symbol.for('berth.Service'),
} as const;

/** A class whose instances the container builds. */
export type Constructor<T> = new (...args: never[]) => T;

/**
 * The only place berth touches tsyringe: apps register instances and classes, resolve the service,
 * and make a child container per app or request. Plugins never see it.
 */
export class BerthContainer {
  private constructor(private readonly inner: DependencyContainer) {}

  /** A fresh container (a child of tsyringe's root, so tests never share registrations). */
  static create(): BerthContainer {
    return new BerthContainer(rootContainer.createChildContainer());
  }

  /** Register a ready-made value (config, store, logger). */
  registerInstance<T>(token: symbol, value: T): this {
    this.inner.registerInstance(token as InjectionToken<T>, value);
    return this;
  }

  /** Register a class built once per container, on first resolve. */
  registerSingleton<T>(token: symbol, type: Constructor<T>): this {
    this.inner.registerSingleton(token as InjectionToken<T>, type as unknown as new (...args: unknown[]) => T);
    return this;
  }

  /** Build or fetch what `token` names. */
  resolve<T>(token: symbol): T {
    return this.inner.resolve<T>(token as InjectionToken<T>);
  }

  /** A child container: it sees this one's registrations and may override them. */
  createChild(): BerthContainer {
    return new BerthContainer(this.inner.createChildContainer());
  }
}
